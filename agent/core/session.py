"""One client conversation over any ``trio.abc.Stream``: read, frame, dispatch, reply.

    data = receive
    while data:
        for each event the framer makes of it: dispatch a request, queue its reply
        data = send the replies, and receive what comes next

Requests are handled one at a time, in order, and every reply goes out through
this one loop's :class:`~agent.core.outbox.Outbox`, so there is a single writer
by construction. The replies to the requests of one read go out in one write,
except that replies already due are sent before a handler that may wait.

Three policies shape the loop without changing what a host sees, each behind a
small interface that says which benchmark figure justifies it: how much to read
at a time (:class:`~agent.core.read_sizes.ReadSizes`), when to give the memory
freed by bulk transfers back to the system
(:class:`~agent.core.memory_release.MemoryRelease`), and, inside the streams
that send a reply and read the next request in one call, a short poll for
that request before sleeping (``agent.transports.after_reply``).
"""

from __future__ import annotations

import logging

import trio

from agent.core.activity import Activity
from agent.core.dispatch import Dispatcher, Pending
from agent.core.memory_release import MemoryRelease, ReleaseMemory
from agent.core.outbox import Outbox
from agent.core.read_sizes import ReadSizes
from agent.wire.encoder import ErrorReply, encode_reply
from agent.wire.framer import Event, Flush, Framer, Message, ParseError
from agent.wire.wirelog import WireLog, for_session

log = logging.getLogger(__name__)

__all__ = ["ReleaseMemory", "serve_session"]


async def serve_session(
    stream: trio.abc.Stream,
    dispatcher: Dispatcher,
    release_memory: ReleaseMemory | None = None,
    *,
    activity: Activity | None = None,
) -> None:
    """Serve ``stream`` until the peer closes it. Every session starts with a
    clean parser. ``activity`` (the agent's) counts its reads and the requests
    under way, and learns of its first reply as it goes out."""
    try:
        await _serve(stream, dispatcher, MemoryRelease(release_memory), activity or Activity())
    except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
        log.debug("client went away: %s", err)


async def _serve(
    stream: trio.abc.Stream,
    dispatcher: Dispatcher,
    memory: MemoryRelease,
    activity: Activity,
) -> None:
    config = dispatcher.ctx.config
    framer = Framer(max_size=config.max_message_size, max_depth=config.max_depth)
    outbox = Outbox(stream)
    sizes = ReadSizes()
    wire = for_session(dispatcher.ctx.registry.secrets)  # None unless -v
    trace = dispatcher.tracing()
    replied = activity.replied.is_set()
    try:
        data: bytes | bytearray | None = await stream.receive_some(sizes.next)
        while data:
            read = len(data)
            sizes.received(read)
            activity.reads += 1
            activity.busy += 1
            try:
                await _answer(dispatcher, framer.receive(data), outbox, wire, read, trace)
            finally:
                activity.busy -= 1
            # Kept until the next read completes, the last read of a big request
            # would keep the heap from giving back what the request took.
            del data
            if not replied and outbox:
                activity.replied.set()
                replied = True
            quiet = memory.quiet_time(read, outbox)
            if quiet is None:
                data = await outbox.send_then_receive(sizes.next)
            else:  # after bulk data: memory goes back once the host is quiet
                data = await outbox.send_then_receive_within(sizes.next, quiet)
                if data is None:
                    memory.release()
                    data = await stream.receive_some(sizes.next)
    finally:
        memory.session_over()


async def _answer(
    dispatcher: Dispatcher,
    events: list[Event],
    outbox: Outbox,
    wire: WireLog | None,
    read: int,
    trace: bool,
) -> None:
    """Run the requests of one read (``read`` bytes) in order and queue their
    replies in ``outbox``, which sends those due before a handler that may wait.
    A function of its own so that a big request and its reply (a 48 MiB read's is
    64 MiB) are freed with its frame, not kept in the loop's variables until
    the next read."""
    for event in events:
        if type(event) is Message:
            if wire:
                wire.request(read, event.value)
            reply = dispatcher.start(event.value, trace=trace)
            if isinstance(reply, Pending):  # a handler that may wait: the replies due go first
                await outbox.flush()
                reply = await dispatcher.finish(reply)
            if reply is not None:
                encoded = encode_reply(reply)
                if wire:
                    wire.reply(reply, encoded)
                outbox.add(encoded)
        elif isinstance(event, ParseError):
            log.debug("parse error: %s", event.reason)
            error = ErrorReply("GenericError", event.reason)
            encoded = encode_reply(error)
            if wire:
                wire.parse_error()
                wire.reply(error, encoded)
            outbox.add(encoded)
        elif isinstance(event, Flush):
            log.debug("0xFF: parser flushed")
