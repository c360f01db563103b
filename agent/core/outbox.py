"""The replies due on a session's stream, and the session's one writer."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence

import trio

from agent.transports.contract import Bytes, ExchangeStream, send_each

JOIN_LIMIT = 256 * 1024  # replies up to this size are joined into one write


class Outbox:
    """Replies queued in order and sent together: small ones in one write, big
    pieces (a big file read's base64) as they are, without a copy.

    On an :class:`~agent.transports.contract.ExchangeStream` the replies due and
    the next read go in one call, ``send_then_receive``: one pass through the
    scheduler for both, where ``send_all`` then ``receive_some`` makes two.
    """

    __slots__ = ("_exchange", "_pending", "_send_pieces", "_stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self._exchange = None
        self._send_pieces: Callable[[Sequence[Bytes]], Awaitable[None]]
        self._send_pieces = functools.partial(send_each, stream)
        if isinstance(stream, ExchangeStream):
            self._exchange = stream.send_then_receive
            self._send_pieces = stream.send_all_pieces

    def add(self, pieces: list[bytes]) -> None:
        """Queue one reply (its pieces, from :func:`~agent.wire.encoder.encode_reply`)."""
        self._pending += pieces

    def __len__(self) -> int:
        """Bytes due."""
        return sum(map(len, self._pending))

    async def flush(self) -> None:
        """Send the replies due (before a handler that may wait, for one)."""
        if not self._pending:
            return
        if self._joinable():
            await self._stream.send_all(self._take())
            return
        pieces = self._pending[:]
        self._pending.clear()
        await self._send_pieces(pieces)

    def send_then_receive(self, max_bytes: int) -> Awaitable[bytes | bytearray]:
        """Send the replies due, then receive up to ``max_bytes``.

        Not a coroutine of its own: it hands back the stream's, one frame less
        per request on the hot path.
        """
        if self._exchange is not None and self._pending and self._joinable():
            return self._exchange(self._take(), max_bytes)
        return self._flush_then_receive(max_bytes)

    async def _flush_then_receive(self, max_bytes: int) -> bytes | bytearray:
        await self.flush()
        return await self._stream.receive_some(max_bytes)

    async def send_then_receive_within(
        self, max_bytes: int, seconds: float
    ) -> bytes | bytearray | None:
        """Send the replies due, then receive up to ``max_bytes``; None when
        nothing came within ``seconds``. Nothing is lost: a receive cancelled
        while it waits has read nothing."""
        await self.flush()
        with trio.move_on_after(seconds):
            return await self._stream.receive_some(max_bytes)
        return None

    def _joinable(self) -> bool:
        return len(self._pending) == 1 or len(self) <= JOIN_LIMIT

    def _take(self) -> bytes:
        """The replies due as one write, and none left due."""
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        return data
