"""The dispatcher's one entry point: a decoded request in, a typed reply event out."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import AsyncIterator

import pytest
import trio

from agent.core.dispatch import Dispatcher, Pending
from agent.core.registry import HandlerSet
from agent.models.schema import parse
from agent.wire.encoder import INLINE_PAYLOAD, NO_ID, ErrorReply, ReturnReply, encode_reply
from agent.wire.payload import Base64Payload
from tests.support.agents import AgentFactory

SCHEMA = """
{ 'struct': 'Data', 'data': { 'buf-b64': 'str', 'count': 'int' } }
{ 'command': 'x-sync', 'returns': 'int' }
{ 'command': 'x-async', 'returns': 'int' }
{ 'command': 'x-quiet', 'success-response': false }
{ 'command': 'x-data', 'returns': 'Data' }
{ 'command': 'x-bad', 'returns': 'int' }
"""
handlers = HandlerSet()


@handlers.command("x-sync")
def x_sync(ctx: object) -> int:
    return 1


@handlers.command("x-async")
async def x_async(ctx: object) -> int:
    await trio.lowlevel.checkpoint()
    return 2


@handlers.command("x-quiet")
def x_quiet(ctx: object) -> None:
    return None


@handlers.command("x-data")
def x_data(ctx: object) -> dict[str, object]:
    return {"buf-b64": Base64Payload(b"\x00\xff"), "count": 2}


@handlers.command("x-bad")
def x_bad(ctx: object) -> str:
    return "not an int"


@pytest.fixture
async def dispatcher(agent_factory: AgentFactory) -> AsyncIterator[Dispatcher]:
    """The dispatcher of a running agent that has the test commands."""
    async with agent_factory(handlers=[handlers], schema=parse(SCHEMA, "test")) as agent:
        yield agent.dispatcher


class Waits:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


async def test_a_sync_handler_runs_without_waiting(dispatcher: Dispatcher) -> None:
    before_wait = Waits()
    reply = await dispatcher.handle({"execute": "x-sync", "id": 7}, before_wait)
    assert reply == ReturnReply(1, 7)
    assert before_wait.count == 0


async def test_the_replies_due_go_out_before_an_async_handler(dispatcher: Dispatcher) -> None:
    before_wait = Waits()
    reply = await dispatcher.handle({"execute": "x-async"}, before_wait)
    assert reply == ReturnReply(2, NO_ID)
    assert before_wait.count == 1


async def test_start_answers_a_sync_request_and_leaves_an_async_one_to_finish(
    dispatcher: Dispatcher,
) -> None:
    """The session's two steps: a sync handler runs in ``start``, with no
    coroutine; an async one is left ``Pending`` until the replies due are sent."""
    assert dispatcher.start({"execute": "x-sync", "id": 7}) == ReturnReply(1, 7)
    pending = dispatcher.start({"execute": "x-async", "id": 8})
    assert isinstance(pending, Pending)
    assert await dispatcher.finish(pending) == ReturnReply(2, 8)
    assert dispatcher.start({"execute": "x-none"}) == ErrorReply(
        "CommandNotFound", "The command x-none has not been found"
    )


async def test_each_command_run_is_logged_when_the_session_traces(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.core.dispatch")
    assert dispatcher.tracing()
    dispatcher.start({"execute": "x-sync"}, trace=False)
    assert "executing x-sync" not in caplog.text
    dispatcher.start({"execute": "x-sync"}, trace=True)
    assert "executing x-sync" in caplog.text
    caplog.set_level(logging.INFO, logger="agent.core.dispatch")
    assert not dispatcher.tracing()


async def test_errors_and_silence_are_events_too(dispatcher: Dispatcher) -> None:
    handle = dispatcher.handle
    assert await handle({"execute": "x-quiet"}) is None
    assert await handle({"execute": "x-none", "id": 1}) == ErrorReply(
        "CommandNotFound", "The command x-none has not been found", 1
    )
    assert await handle([]) == ErrorReply("GenericError", "QMP input must be a JSON object")
    assert await handle({"execute": "x-bad"}) == ErrorReply(
        "GenericError", "internal error: reply of x-bad is malformed"
    )


async def test_a_base64_payload_is_encoded_by_the_protocol(dispatcher: Dispatcher) -> None:
    reply = await dispatcher.handle({"execute": "x-data"})
    assert isinstance(reply, ReturnReply)
    assert b"".join(encode_reply(reply)) == b'{"return": {"buf-b64": "AP8=", "count": 2}}\n'


def test_small_payloads_go_in_the_line_big_ones_in_pieces_of_their_own() -> None:
    small = encode_reply(ReturnReply({"buf-b64": Base64Payload(b"\x00" * 4096), "eof": True}, 7))
    assert len(small) == 1
    assert json.loads(small[0]) == {
        "return": {"buf-b64": base64.b64encode(b"\x00" * 4096).decode(), "eof": True},
        "id": 7,
    }
    data = os.urandom(INLINE_PAYLOAD + 1)
    pieces = encode_reply(ReturnReply({"count": len(data), "buf-b64": Base64Payload(data)}))
    assert pieces[1] == base64.b64encode(data)  # sent as it is, not copied into a str
    assert json.loads(b"".join(pieces)) == {
        "return": {"count": len(data), "buf-b64": base64.b64encode(data).decode()}
    }
