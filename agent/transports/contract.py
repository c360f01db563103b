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


# How long a stream looks for the peer's next message after a reply before it
# sleeps in the kernel (seconds); see poll_after_reply.
POLL_AFTER_REPLY = 50e-6


async def poll_after_reply(try_read: Callable[[], bytes | None]) -> bytes | None:
    """The post-reply poll policy: ``try_read()`` after each pass through the
    scheduler, for up to :data:`POLL_AFTER_REPLY`: what it read, or None
    (nothing came in time; the stream then waits in the kernel).

    A host that sends its next request at once (a sync, then the command; a
    file read chunk after chunk) finds the agent awake: falling asleep and being
    woken costs more than these passes. Measured with the poll taken out
    (``benchmarks/ab.py --base fbd476c --only ping-p50 ping-p99 pipelined
    connect connect-cpu small-reads-cpu read-4k-cpu``, 5 alternating rounds on
    a busy 2-core machine): ping p50 1.21x (1.07-1.48 over the rounds),
    pipelined pings 0.60x, connect cycles unchanged; the agent's CPU 0.92x per
    connect cycle and 0.95x per MiB of 4 KiB reads. It wins the latency rows by
    more than its CPU costs, so it stays. A host that sends nothing more costs
    at most POLL_AFTER_REPLY of CPU per reply, and nothing while idle.

    ``try_read`` returns None when nothing is waiting; it never blocks. The
    passes are cancel-shielded: the caller checked for cancellation before the
    reply, and checks again in the wait that comes after.
    """
    give_up = trio.current_time() + POLL_AFTER_REPLY
    while True:
        await trio.lowlevel.cancel_shielded_checkpoint()
        data = try_read()
        if data is not None or trio.current_time() >= give_up:
            return data


class ExchangeStream(trio.abc.Stream):
    """A stream that can also send a reply and receive what comes next in one call.

    A conversation of requests and replies pays a pass through the scheduler
    for each stream call: two per request with ``send_all`` then
    ``receive_some``. :meth:`send_then_receive` is one call, and one full
    checkpoint, for both. It keeps the rest of the contract: cancellation is
    checked before anything is sent, a cancellation while waiting for the
    answer comes after the whole reply went out, errors map as in the two
    calls, and it conflicts with any other send or receive.

    After the reply it looks for the peer's next message with
    :func:`poll_after_reply` before it sleeps in the kernel.

    The session uses it for every reply it can send in one write
    (``agent.core.outbox``). Without it (each reply sent, then a read, and
    no poll), on the benchmark of :func:`poll_after_reply`: ping p50 1.12x
    (1.11-1.75), pipelined pings 0.62x, connect cycles 0.79x and their CPU
    1.12x; CPU per MiB of 4 KiB reads unchanged.
    """

    @abstractmethod
    async def send_then_receive(
        self, data: bytes | bytearray | memoryview, max_bytes: int | None = None
    ) -> bytes:
        """``send_all(data)``, then ``receive_some(max_bytes)``, as one checkpoint."""
