"""What trio's stream contract asks of every stream a transport hands out, in one place."""

from __future__ import annotations

import operator
from abc import abstractmethod
from collections.abc import Callable
from types import TracebackType

import trio


class OneAtATime:
    """Entered by each send (or each receive); a second task entering raises
    ``trio.BusyResourceError`` instead of interleaving bytes."""

    __slots__ = ("_held", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what} on this stream")
        self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._held = False


def receive_size(max_bytes: int | None, default: int) -> int:
    """``max_bytes`` checked as trio's streams check it (a positive integer), or ``default``."""
    if max_bytes is None:
        return default
    size = operator.index(max_bytes)
    if size < 1:
        raise ValueError("max_bytes must be >= 1")
    return size


async def look_after_reply(try_read: Callable[[], bytes | None]) -> bytes | None:
    """After a reply: one pass through the scheduler, then ``try_read()``: a
    message already there (the next request of a host that sends them back to
    back, the end of a host that closes at once) is taken without sleeping in
    the kernel; None when nothing is there yet (the stream then waits).

    It used to go on looking after each pass for up to 50 us, so that a host
    sending its next request at once found the agent awake (measured then with
    ``benchmarks/ab.py --base fbd476c``, busy 2-core machine: ping p50 1.21x
    and pipelined pings 0.60x without it, CPU per connect cycle 0.92x and per
    MiB of 4 KiB reads 0.95x). Measured again in one run against the build
    that had it (``benchmarks/ab.py --base eeadd15 --rounds 5 --only ping-p50
    ping-p99 pipelined connect connect-cpu small-reads-cpu read-4k
    read-4k-cpu``, load 4.8 to 5.0 on 2 cores), one look did as well for
    latency (ping p50 0.99x, p99 0.94x) and better for the rest: pipelined
    pings 1.27x, connect cycles 1.14x, CPU per connect cycle 0.96x and per MiB
    of 4 KiB reads 0.92x, which the spinning had made 1.07x the floor's. A
    host that answers in a few microseconds is caught by the one look; one
    that takes longer was caught by the spinning only after passes that cost
    more CPU than sleeping, and on a busy machine took the CPU its host needed.

    ``try_read`` returns None when nothing is waiting; it never blocks. The
    pass is cancel-shielded: the caller checked for cancellation before the
    reply, and checks again in the wait that comes after.
    """
    await trio.lowlevel.cancel_shielded_checkpoint()
    return try_read()


class ExchangeStream(trio.abc.Stream):
    """A stream that can also send a reply and receive what comes next in one call.

    A conversation of requests and replies pays a pass through the scheduler
    for each stream call: two per request with ``send_all`` then
    ``receive_some``. :meth:`send_then_receive` is one call, and one full
    checkpoint, for both. It keeps the rest of the contract: cancellation is
    checked before anything is sent, a cancellation while waiting for the
    answer comes after the whole reply went out, errors map as in the two
    calls, and it conflicts with any other send or receive.

    After the reply it looks for the peer's next message once
    (:func:`look_after_reply`) before it sleeps in the kernel.

    The session uses it for every reply it can send in one write
    (``agent.core.outbox``). Without it (each reply sent, then a read),
    measured when it still polled for 50 us after the reply (see
    :func:`look_after_reply`; ``benchmarks/ab.py --base fbd476c``): ping p50
    1.12x (1.11-1.75), pipelined pings 0.62x, connect cycles 0.79x and their
    CPU 1.12x; CPU per MiB of 4 KiB reads unchanged.
    """

    @abstractmethod
    async def send_then_receive(
        self, data: bytes | bytearray | memoryview, max_bytes: int | None = None
    ) -> bytes:
        """``send_all(data)``, then ``receive_some(max_bytes)``, as one checkpoint."""
