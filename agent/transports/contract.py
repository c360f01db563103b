"""What trio's stream contract asks of every stream a transport hands out, in one place."""

from __future__ import annotations

import operator
from abc import abstractmethod
from collections.abc import Sequence
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


Bytes = bytes | bytearray | memoryview
# The most buffers one sendmsg(2) or writev(2) takes (IOV_MAX on Linux).
MAX_BUFFERS = 1024


def unsent(views: list[memoryview], sent: int) -> list[memoryview]:
    """What is left of ``views`` once a gather write sent ``sent`` bytes of them."""
    for index, view in enumerate(views):
        if sent < len(view):
            return [view[sent:], *views[index + 1 :]]
        sent -= len(view)
    return []


async def send_each(stream: trio.abc.Stream, pieces: Sequence[Bytes]) -> None:
    """``pieces`` on ``stream`` one ``send_all`` at a time: a stream's own way
    when it has no gather write (:meth:`ExchangeStream.send_all_pieces`)."""
    for piece in pieces:
        await stream.send_all(piece)


def receive_size(max_bytes: int | None, default: int) -> int:
    """``max_bytes`` checked as trio's streams check it (a positive integer), or ``default``."""
    if max_bytes is None:
        return default
    size = operator.index(max_bytes)
    if size < 1:
        raise ValueError("max_bytes must be >= 1")
    return size


class ExchangeStream(trio.abc.Stream):
    """A stream that can also send a reply and receive what comes next in one call.

    A conversation of requests and replies pays a pass through the scheduler
    for each stream call: two per request with ``send_all`` then
    ``receive_some``. :meth:`send_then_receive` is one call, and one full
    checkpoint, for both. It keeps the rest of the contract: cancellation is
    checked before anything is sent, a cancellation while waiting for the
    answer comes after the whole reply went out, errors map as in the two
    calls, and it conflicts with any other send or receive.

    After the reply it looks for the peer's next message as its post-reply
    poll policy says (``agent.transports.after_reply``) before it sleeps in the
    kernel.

    The session uses it for every reply it can send in one write
    (``agent.core.outbox``). Without it (each reply sent, then a read),
    measured with a 50 us poll after each reply (``benchmarks/ab.py --base
    fbd476c``): ping p50 1.12x (1.11-1.75), pipelined pings 0.62x, connect
    cycles 0.79x and their CPU 1.12x; CPU per MiB of 4 KiB reads unchanged.
    """

    async def send_all_pieces(self, pieces: Sequence[Bytes]) -> None:
        """``send_all`` of each piece in turn: one stream of bytes, as one call.

        A stream that writes several buffers in one system call overrides it
        (``sendmsg``, ``writev``): a reply in pieces (a big file read's base64,
        sent without being joined) then goes out in one write where the peer
        has room, and one pass through the scheduler. For 1 MiB reads that
        took the agent's CPU per MiB to 0.96x (0.90-1.00 over 7 rounds;
        docs/benchmarks.md, "Replies in pieces, in one write")."""
        await send_each(self, pieces)

    @abstractmethod
    async def send_then_receive(
        self, data: bytes | bytearray | memoryview, max_bytes: int | None = None
    ) -> bytes:
        """``send_all(data)``, then ``receive_some(max_bytes)``, as one checkpoint."""
