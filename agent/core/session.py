"""One client conversation over any ``trio.abc.Stream``.

Requests are handled one at a time, in order, and every reply goes out
through this one loop, so there is a single writer by construction. Replies
to the requests of one read are sent in one write, except that replies
already due are flushed before a handler that may wait.

A session that moved bulk data (file transfers) gives the memory freed since
back to the system when its host goes quiet or leaves, through the
``release_memory`` the agent was given (the CLI's ``malloc_trim``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from agent.core.dispatch import Dispatcher
from agent.transports.contract import ExchangeStream
from agent.wire.encoder import ErrorReply, encode_reply
from agent.wire.framer import Event, Flush, Framer, Message, ParseError
from agent.wire.wirelog import WireLog, for_session

log = logging.getLogger(__name__)

MIN_READ = 64 * 1024
MAX_READ = 1024 * 1024
JOIN_LIMIT = 256 * 1024  # replies up to this size are joined into one write
# Freed memory is worth giving back once a session moved BULK bytes of requests
# and replies in reads (with their replies) of BULK_PIECE or more (small ones
# reuse the same few buffers), and then the host is QUIET for that many
# seconds, or leaves. Until then every read waits at most QUIET for the next
# one, instead of taking the stream's reply-and-read exchange.
BULK = 1024 * 1024
BULK_PIECE = 64 * 1024
QUIET = 1.0

ReleaseMemory = Callable[[], None]


async def serve_session(
    stream: trio.abc.Stream,
    dispatcher: Dispatcher,
    release_memory: ReleaseMemory | None = None,
) -> None:
    """Serve ``stream`` until the peer closes it. Every session starts with a clean parser."""
    try:
        await _serve(stream, dispatcher, release_memory)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
        log.debug("client went away: %s", err)


async def _serve(
    stream: trio.abc.Stream, dispatcher: Dispatcher, release_memory: ReleaseMemory | None
) -> None:
    config = dispatcher.ctx.config
    framer = Framer(max_size=config.max_message_size, max_depth=config.max_depth)
    pending: list[bytes] = []
    read_size = MIN_READ
    wire = for_session(dispatcher.ctx.registry.secrets)  # None unless -v
    moved = 0  # bytes of bulk requests and replies since memory was last given back

    async def flush() -> None:  # the replies due, before a handler that may wait
        if pending:
            await _send(stream, pending)

    exchange = stream.send_then_receive if isinstance(stream, ExchangeStream) else None
    try:
        data: bytes | bytearray | None = await stream.receive_some(read_size)
        while data:
            # Big requests (file writes) arrive faster in big reads; small ones
            # should not pay for allocating a big buffer. Halving rather than
            # resetting keeps the size for a host that writes chunk after chunk.
            if len(data) == read_size:
                read_size = min(read_size * 2, MAX_READ)
            elif len(data) < read_size // 2:
                read_size = max(read_size // 2, MIN_READ)
            read = len(data)
            await _answer(dispatcher, framer.receive(data), pending, flush, wire, read)
            # Kept until the next read completes, the last read of a big request
            # would keep the heap from giving back what the request took.
            del data
            if release_memory is not None:  # else nothing to count on the hot path
                this_round = read + sum(map(len, pending))
                if this_round >= BULK_PIECE:
                    moved += this_round
            if release_memory is not None and moved >= BULK:
                if pending:
                    await _send(stream, pending)
                data = await _receive_within(stream, read_size, QUIET)
                if data is None:  # the host is quiet after bulk data
                    release_memory()
                    moved = 0
                    data = await stream.receive_some(read_size)
            elif exchange is not None and pending and _joinable(pending):
                # The replies and the next read in one pass through the scheduler.
                data = await exchange(_take(pending), read_size)
            else:
                if pending:
                    await _send(stream, pending)
                data = await stream.receive_some(read_size)
    finally:
        if release_memory is not None and moved >= BULK:
            release_memory()  # the host left after bulk data


async def _receive_within(
    stream: trio.abc.Stream, size: int, seconds: float
) -> bytes | bytearray | None:
    """The next read, or None when nothing came within ``seconds``. Nothing is
    lost: a receive cancelled while it waits has read nothing."""
    with trio.move_on_after(seconds):
        return await stream.receive_some(size)
    return None


async def _answer(
    dispatcher: Dispatcher,
    events: list[Event],
    pending: list[bytes],
    flush: Callable[[], Awaitable[None]],
    wire: WireLog | None,
    read: int,
) -> None:
    """Run the requests of one read (``read`` bytes); their replies go to
    ``pending``, and ``flush`` sends them before a handler that may wait. A
    function of its own so that a big request and its reply (a 48 MiB read's is
    64 MiB) are freed with its frame, not kept in the loop's variables until
    the next read."""
    for event in events:
        if isinstance(event, Message):
            if wire:
                wire.request(read, event.value)
            reply = await dispatcher.handle(event.value, flush)
            if reply is not None:
                encoded = encode_reply(reply)
                if wire:
                    wire.reply(reply, encoded)
                pending += encoded
        elif isinstance(event, ParseError):
            log.debug("parse error: %s", event.reason)
            error = ErrorReply("GenericError", event.reason)
            encoded = encode_reply(error)
            if wire:
                wire.parse_error()
                wire.reply(error, encoded)
            pending += encoded
        elif isinstance(event, Flush):
            log.debug("0xFF: parser flushed")


async def _send(stream: trio.abc.Stream, pending: list[bytes]) -> None:
    """Send the replies due: small ones in one write, big pieces as they are (no copy)."""
    if _joinable(pending):
        await stream.send_all(_take(pending))
        return
    pieces = pending[:]
    pending.clear()
    for piece in pieces:
        await stream.send_all(piece)


def _joinable(pending: list[bytes]) -> bool:
    return len(pending) == 1 or sum(map(len, pending)) <= JOIN_LIMIT


def _take(pending: list[bytes]) -> bytes:
    """The replies due as one write, and ``pending`` emptied."""
    data = pending[0] if len(pending) == 1 else b"".join(pending)
    pending.clear()
    return data
