"""A trio Stream over a connected socket, lean on the request/reply hot path.

It keeps trio's contract (``trio.testing.check_half_closeable_stream`` runs
over it in the suite): every operation checks for cancellation first and
passes once through the scheduler even when it completes at once, every
``OSError`` becomes ``trio.BrokenResourceError`` (or ``ClosedResourceError``
once closed) with the cause chained, and two tasks sending (or receiving) at
once raise ``trio.BusyResourceError``. What it saves over trio's
SocketStream is the layers between the stream and the socket call
(``trio.socket``'s wrapper, its async context managers): it calls the socket
directly and waits only when the call would block. It is an
:class:`~agent.transports.contract.ExchangeStream`: a reply and the next read
in one call.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

from agent.transports.after_reply import PollWhileAnswered
from agent.transports.contract import (
    MAX_BUFFERS,
    Bytes,
    ExchangeStream,
    OneAtATime,
    receive_size,
    unsent,
)

DEFAULT_RECEIVE_SIZE = 64 * 1024


class SocketStream(trio.abc.HalfCloseableStream, ExchangeStream):
    """``trio.abc.Stream`` over a connected stream socket, which it owns and closes."""

    def __init__(self, sock: socket.socket, after_reply: PollWhileAnswered | None = None) -> None:
        """``after_reply``: the post-reply poll, shared by the connections of one
        listener (one host, whose pace it learns); a stream's own by default."""
        sock.setblocking(False)
        self._sock = sock
        self._sending = OneAtATime("sending")
        self._receiving = OneAtATime("receiving")
        self._after_reply = after_reply or PollWhileAnswered()
        self._eof_sent = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = receive_size(max_bytes, DEFAULT_RECEIVE_SIZE)
        with self._receiving:
            await trio.lowlevel.checkpoint_if_cancelled()
            return await self._receive(size)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._send(data)
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_all_pieces(self, pieces: Sequence[Bytes]) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_sendable()
            views = [memoryview(piece) for piece in pieces]
            while views:
                try:
                    views = unsent(views, self._sock.sendmsg(views[:MAX_BUFFERS]))
                except BlockingIOError:
                    await self._wait(trio.lowlevel.wait_writable)
                except OSError as err:
                    raise self._translate(err) from err
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_then_receive(
        self, data: bytes | bytearray | memoryview, max_bytes: int | None = None
    ) -> bytes:
        size = receive_size(max_bytes, DEFAULT_RECEIVE_SIZE)
        with self._sending, self._receiving:
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._send(data)
            read = await self._after_reply.next_message(functools.partial(self._try_receive, size))
            return read if read is not None else await self._wait_and_receive(size)

    def _try_receive(self, size: int) -> bytes | None:
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            return None
        except OSError as err:
            raise self._translate(err) from err

    async def _receive(self, size: int) -> bytes:
        """One receive, after the caller checked for cancellation: the rest of a checkpoint."""
        data = self._try_receive(size)
        if data is None:
            return await self._wait_and_receive(size)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def _wait_and_receive(self, size: int) -> bytes:
        while True:  # the wait is the pass through the scheduler
            await self._wait(trio.lowlevel.wait_readable)
            data = self._try_receive(size)
            if data is not None:
                return data

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        """All of ``data``, waiting when the socket is full; no pass through the scheduler
        when it is not (the caller makes one)."""
        self._check_sendable()
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                try:
                    sent += self._sock.send(view[sent:])
                except BlockingIOError:
                    await self._wait(trio.lowlevel.wait_writable)
                except OSError as err:
                    raise self._translate(err) from err

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            await self._wait(trio.lowlevel.wait_writable)

    async def send_eof(self) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._check_open()
            if self._eof_sent:
                return
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as err:
                raise self._translate(err) from err
            self._eof_sent = True

    async def aclose(self) -> None:
        if self._sock.fileno() != -1:
            # Wake a task waiting on the socket before its number is reused.
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        self._check_open()
        await wait(self._sock)

    def _check_open(self) -> None:
        if self._sock.fileno() == -1:
            raise trio.ClosedResourceError("the stream is closed")

    def _check_sendable(self) -> None:
        self._check_open()
        if self._eof_sent:
            raise trio.ClosedResourceError("the end of the stream was sent")

    def _translate(self, err: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._sock.fileno() == -1:
            return trio.ClosedResourceError("the stream is closed")
        return trio.BrokenResourceError(f"the connection broke: {err.strerror or err}")
