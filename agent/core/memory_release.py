"""When a session gives the memory its bulk transfers freed back to the system."""

from __future__ import annotations

from collections.abc import Callable, Sized

ReleaseMemory = Callable[[], None]

# Freed memory is worth giving back once a session moved BULK bytes of requests
# and replies in reads (with their replies) of BULK_PIECE or more (small ones
# reuse the same few buffers), and then the host is QUIET for that many
# seconds, or leaves.
BULK = 1024 * 1024
BULK_PIECE = 64 * 1024
QUIET = 1.0


class MemoryRelease:
    """Counts the bytes a session moves and says when to call ``release_memory``
    (the CLI's ``malloc_trim``; None for an embedding program, whose allocator
    is its own business: then it never does).

    1 MiB buffers sit below the allocator's fixed mmap threshold
    (``agent/daemon/allocator.py``); freed under a block still in use, they
    stay in the heap, in some runs and not others. Without this policy
    (``benchmarks/ab.py --base fbd476c --only memory-after-load
    memory-after-48m``, 5 rounds) the medians were 1.01x (34.1 against 33.8
    MiB), but ``tests/test_memory.py`` failed one run in three: more than 5 MiB
    above idle after a 48 MiB read (the allocator's notes: 60 to 77 MiB against
    38 idle in two runs of six). It stays for those runs. Until memory went
    back, every read waits at most QUIET for the next request, instead of
    taking the stream's reply-and-read exchange; small requests never start
    the count, so pings and 4 KiB reads pay one call per read and nothing else.
    """

    __slots__ = ("_moved", "_release")

    def __init__(self, release_memory: ReleaseMemory | None) -> None:
        self._release = release_memory
        self._moved = 0  # bytes of bulk requests and replies since memory went back

    def quiet_time(self, read: int, replies: Sized) -> float | None:
        """After a read of ``read`` bytes whose replies are due (``len(replies)``
        bytes): how long the host may stay quiet before :meth:`release`, or None
        when there is nothing worth giving back."""
        if self._release is None:
            return None
        this_round = read + len(replies)
        if this_round >= BULK_PIECE:
            self._moved += this_round
        return QUIET if self._moved >= BULK else None

    def release(self) -> None:
        """The host was quiet for :meth:`quiet_time`: give the memory back."""
        if self._release is not None:
            self._release()
        self._moved = 0

    def session_over(self) -> None:
        """The host left: give the memory back if it moved bulk data."""
        if self._moved >= BULK:
            self.release()
