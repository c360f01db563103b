"""How much a session asks of its stream at a time."""

from __future__ import annotations

MIN_READ = 64 * 1024
MAX_READ = 1024 * 1024


class ReadSizes:
    """Reads grow for big requests and shrink back for small ones.

    Big requests (file writes of 1 MiB and more) arrive faster in big reads:
    a read that filled its buffer doubles the next one, up to MAX_READ. Small
    requests should not pay for allocating a big buffer: a read less than half
    full halves the next one, down to MIN_READ. Halving rather than resetting
    keeps the size for a host that writes chunk after chunk (a short read in the
    middle of a transfer is common).

    What it pays for, ``benchmarks/ab.py --only write-1m write-16m small-reads-cpu``
    against fixed 64 KiB reads on the same machine: see ``docs/benchmarks.md``.
    """

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = MIN_READ  # the size of the next read

    def received(self, count: int) -> None:
        """A read gave ``count`` bytes."""
        if count == self.next:
            self.next = min(count * 2, MAX_READ)
        elif count < self.next // 2:
            self.next = max(self.next // 2, MIN_READ)
