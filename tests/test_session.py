"""The agent end to end over an in-memory stream: framing, dispatch, replies."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from agent import Agent
from agent.core.config import DEFAULT_FS_TIMEOUT, KERNEL_MOUNT_TABLE
from agent.core.memory_release import BULK
from agent.core.registry import HandlerSet
from agent.models.schema import parse
from agent.system.fsfreeze.freezer import Freezer
from agent.system.fsfreeze.marker import MARKER_NAME
from agent.system.fsguard import FsGuard
from tests.support.agents import AgentFactory, served
from tests.support.clients import StreamClient
from tests.support.fsfreeze_fakes import FakeIoctls

GENERIC = "GenericError"


def error(desc: str, error_class: str = GENERIC, **extra: Any) -> dict[str, Any]:
    return {**extra, "error": {"class": error_class, "desc": desc}}


async def test_ping(agent_client: StreamClient) -> None:
    assert await agent_client.execute("guest-ping") == {"return": {}}


async def test_replies_are_ascii_lines_with_id_echoed(agent_client: StreamClient) -> None:
    request_id = {"k": ["\u00e9", 1, None, True, 2.5]}
    await agent_client.send(json.dumps({"execute": "guest-ping", "id": request_id}).encode())
    line = await agent_client.line()
    assert line.isascii()
    assert json.loads(line) == {"return": {}, "id": request_id}


@pytest.mark.parametrize("sync_id", [0, -1, 2**63 - 1, -(2**63), 12345])
async def test_sync_echoes_64_bit_ids(agent_client: StreamClient, sync_id: int) -> None:
    assert await agent_client.execute("guest-sync", {"id": sync_id}) == {"return": sync_id}


@pytest.mark.parametrize(
    "raw_id",
    [
        b"9223372036854775808",
        b"1e3",
        b"1.5",
        b"1.0",
        b'"7"',
        b"true",
        b"null",
        b"-9223372036854775809",
    ],
)
async def test_sync_refuses_ids_that_are_not_exact_64_bit_integers(
    agent_client: StreamClient, raw_id: bytes
) -> None:
    await agent_client.send(b'{"execute":"guest-sync","arguments":{"id":' + raw_id + b"}}")
    assert await agent_client.reply() == error("Invalid parameter type for 'id', expected: integer")


async def test_sync_delimited_reply_starts_with_ff(agent_client: StreamClient) -> None:
    await agent_client.send(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":42}}')
    assert await agent_client.line() == b'\xff{"return": 42}'


async def test_missing_and_unexpected_parameters(agent_client: StreamClient) -> None:
    assert await agent_client.execute("guest-sync") == error("Parameter 'id' is missing")
    assert await agent_client.execute("guest-sync", {"id": 1, "foo": 2}) == error(
        "Parameter 'foo' is unexpected"
    )
    assert await agent_client.execute("guest-ping", {"foo": 1}) == error(
        "Parameter 'foo' is unexpected"
    )
    assert await agent_client.execute("guest-ping", {}) == {"return": {}}


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (b"[]", error("QMP input must be a JSON object")),
        (b"123 ", error("QMP input must be a JSON object")),
        (b'"abc"', error("QMP input must be a JSON object")),
        (b"null ", error("QMP input must be a JSON object")),
        (b"{}", error("QMP input lacks member 'execute'")),
        (b'{"arguments":{}}', error("QMP input lacks member 'execute'")),
        (b'{"execute":1}', error("QMP input member 'execute' must be a string")),
        (b'{"execute":"guest-ping","foo":1}', error("QMP input member 'foo' is unexpected")),
        (b'{"exec-oob":"guest-ping"}', error("QMP input member 'exec-oob' is unexpected")),
        (
            b'{"execute":"guest-ping","arguments":[]}',
            error("QMP input member 'arguments' must be an object"),
        ),
        (
            b'{"execute":"guest-ping","arguments":null}',
            error("QMP input member 'arguments' must be an object"),
        ),
        (
            b'{"execute":"nope","id":"x"}',
            error("The command nope has not been found", "CommandNotFound", id="x"),
        ),
        (
            b'{"execute":"guest-ping","foo":1,"id":3}',
            error("QMP input member 'foo' is unexpected", id=3),
        ),
        (
            b'{"execute":"guest-sync","arguments":{"id":"s"},"id":7}',
            error("Invalid parameter type for 'id', expected: integer", id=7),
        ),
        (b'{"execute":"guest-ping","id":null}', {"return": {}, "id": None}),
    ],
)
async def test_request_shape_errors_worded_as_qemu_ga(
    agent_client: StreamClient, request_bytes: bytes, reply: dict[str, Any]
) -> None:
    await agent_client.send(request_bytes)
    assert await agent_client.reply() == reply


async def test_bad_json_gets_one_error_then_serving_goes_on(agent_client: StreamClient) -> None:
    await agent_client.send(b'{bad json\n{"execute":"guest-ping"}\n')
    assert await agent_client.reply() == error("JSON parse error, invalid keyword 'bad'")
    assert await agent_client.reply() == {"return": {}}
    await agent_client.expect_silence()


async def test_lone_ff_gets_no_reply(
    agent_client: StreamClient, autojump_clock: trio.abc.Clock
) -> None:
    await agent_client.send(b"\xff")
    await agent_client.expect_silence()
    assert await agent_client.execute("guest-ping") == {"return": {}}


async def test_pipelined_requests_answered_in_order(agent_client: StreamClient) -> None:
    data = b"".join(
        json.dumps({"execute": "guest-sync", "arguments": {"id": i}}).encode() for i in range(200)
    )
    await agent_client.send(data)
    for i in range(200):
        assert await agent_client.reply() == {"return": i}


async def test_guest_info_lists_every_command(agent_client: StreamClient, agent: Agent) -> None:
    info = (await agent_client.execute("guest-info"))["return"]
    assert info["version"] == "0.1.0"
    names = [c["name"] for c in info["supported_commands"]]
    assert names == [c.name for c in agent.context.registry]
    assert {"guest-sync", "guest-sync-delimited", "guest-ping", "guest-info"} <= set(names)
    no_reply = {c.name for c in agent.context.registry if not c.success_response}
    assert no_reply == {
        "guest-shutdown",
        "guest-suspend-disk",
        "guest-suspend-ram",
        "guest-suspend-hybrid",
    }
    for entry in info["supported_commands"]:
        assert entry == {
            "name": entry["name"],
            "enabled": True,
            "success-response": entry["name"] not in no_reply,
        }


async def test_frozen_state_disables_commands_per_schema(
    tmp_path: Path, agent_factory: AgentFactory
) -> None:
    agent = agent_factory(freezer=started_frozen(str(tmp_path)))
    async with served(agent) as agent_client:
        assert await agent_client.execute("guest-ping") == {"return": {}}
        assert await agent_client.execute("guest-sync", {"id": 3}) == {"return": 3}
        info = (await agent_client.execute("guest-info"))["return"]
    enabled = {c["name"]: c["enabled"] for c in info["supported_commands"]}
    for command in agent.context.registry:
        assert enabled[command.name] == command.allowed_while_frozen
    assert enabled["guest-sync-delimited"]
    assert not enabled["guest-file-open"]


# ---------------------------------------------- agents with test commands --
TEST_SCHEMA = parse(
    """
    { 'command': 'guest-ping', 'allowed-while-frozen': true }
    { 'command': 'test-quiet', 'success-response': false }
    { 'command': 'test-slow', 'data': { 'seconds': 'number' } }
    { 'command': 'test-broken' }
    { 'command': 'test-bad-reply', 'returns': 'int' }
    { 'command': 'test-refuse', 'data': { '*why': 'str' } }
    """,
    "test schema",
)
test_handlers = HandlerSet()


@test_handlers.command("guest-ping")
def ping(ctx: object) -> dict[str, object]:
    return {}


@test_handlers.command("test-quiet")
def quiet(ctx: object) -> dict[str, object]:
    return {}


@test_handlers.command("test-slow")
async def slow(ctx: object, seconds: float) -> dict[str, object]:
    await trio.sleep(seconds)
    return {}


@test_handlers.command("test-broken")
def broken(ctx: object) -> dict[str, object]:
    raise KeyError("inside the handler")


@test_handlers.command("test-bad-reply")
def bad_reply(ctx: object) -> str:
    return "not an int"


@test_handlers.command("test-refuse")
def refuse(ctx: object, why: str | None) -> dict[str, object]:
    from agent.errors import GenericError

    raise GenericError(why or "no reason")


def started_frozen(statedir: str) -> Freezer:
    """A freezer that starts frozen: an earlier agent's marker lists a
    mountpoint whose state FITHAW cannot tell (the agent checks it at start)."""
    (Path(statedir) / MARKER_NAME).write_text('["/frozen"]')
    ioctls = FakeIoctls(unanswered_thaw=("/frozen",))
    fs = FsGuard(DEFAULT_FS_TIMEOUT, mount_table=KERNEL_MOUNT_TABLE)
    return Freezer(statedir, mount_table=os.devnull, fs=fs, ioctls=ioctls, watchdog=False)


async def serve_test_agent(
    nursery: trio.Nursery, make: AgentFactory, **overrides: Any
) -> tuple[StreamClient, Agent]:
    """A running agent of ``make`` with the test commands, served in ``nursery``;
    cancel it to stop."""
    agent = make(handlers=[test_handlers], schema=TEST_SCHEMA, **overrides)
    client_end, agent_end = trio.testing.memory_stream_pair()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        async with agent:
            await agent.serve(agent_end, task_status=task_status)

    await nursery.start(run)
    return StreamClient(client_end), agent


async def test_success_response_false_sends_no_reply(agent_factory: AgentFactory) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await serve_test_agent(nursery, agent_factory)
        await client.send(b'{"execute":"test-quiet"}{"execute":"guest-ping","id":1}')
        assert await client.reply() == {"return": {}, "id": 1}
        nursery.cancel_scope.cancel()


async def test_handler_exceptions_become_generic_errors(agent_factory: AgentFactory) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await serve_test_agent(nursery, agent_factory)
        reply = await client.execute("test-broken")
        assert reply["error"]["class"] == GENERIC
        assert "internal error in test-broken" in reply["error"]["desc"]
        assert await client.execute("test-refuse", {"why": "because"}) == error("because")
        reply = await client.execute("test-bad-reply")
        assert reply == error("internal error: reply of test-bad-reply is malformed")
        assert await client.execute("guest-ping") == {"return": {}}
        nursery.cancel_scope.cancel()


async def test_async_handlers_run_under_a_timeout(
    agent_factory: AgentFactory, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await serve_test_agent(nursery, agent_factory, command_timeout=5)
        assert await client.execute("test-slow", {"seconds": 1}) == {"return": {}}
        assert await client.execute("test-slow", {"seconds": 60}) == error(
            "command test-slow timed out after 5 s"
        )
        nursery.cancel_scope.cancel()


async def test_replies_due_are_sent_before_a_slow_handler(
    agent_factory: AgentFactory, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await serve_test_agent(nursery, agent_factory)
        await client.send(
            b'{"execute":"guest-ping","id":1}{"execute":"test-slow","arguments":{"seconds":3}}'
        )
        with trio.fail_after(1):
            assert await client.reply() == {"return": {}, "id": 1}
        assert await client.reply() == {"return": {}}
        nursery.cancel_scope.cancel()


async def test_blocked_and_allowed_rpcs(agent_factory: AgentFactory) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await serve_test_agent(nursery, agent_factory, blocked_rpcs=("test-quiet",))
        assert await client.execute("test-quiet") == error(
            "Command test-quiet has been disabled: the command is not allowed", "CommandNotFound"
        )
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        client, _ = await serve_test_agent(nursery, agent_factory, allowed_rpcs=("guest-ping",))
        assert await client.execute("guest-ping") == {"return": {}}
        assert await client.execute("test-broken") == error(
            "Command test-broken has been disabled: the command is not allowed", "CommandNotFound"
        )
        nursery.cancel_scope.cancel()


async def test_frozen_refuses_commands_not_allowed_while_frozen(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await serve_test_agent(
            nursery, agent_factory, freezer=started_frozen(str(tmp_path))
        )
        assert await client.execute("test-broken") == error(
            "Command test-broken has been disabled: the command is not allowed",
            "CommandNotFound",
        )
        assert await client.execute("guest-ping") == {"return": {}}
        nursery.cancel_scope.cancel()


async def test_each_connection_starts_with_a_clean_parser(agent: Agent) -> None:
    first_client, first_agent_end = trio.testing.memory_stream_pair()
    second_client, second_agent_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve, first_agent_end)
        await first_client.send_all(b'{"execute":"guest-sy')  # half a request, then gone
        await first_client.aclose()
        nursery.start_soon(agent.serve, second_agent_end)
        client = StreamClient(second_client)
        assert await client.execute("guest-ping") == {"return": {}}
        await second_client.aclose()


async def test_one_client_at_a_time(agent: Agent) -> None:
    first_client, first_agent_end = trio.testing.memory_stream_pair()
    second_client, second_agent_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve, first_agent_end)
        first = StreamClient(first_client)
        assert await first.execute("guest-ping") == {"return": {}}
        nursery.start_soon(agent.serve, second_agent_end)
        second = StreamClient(second_client)
        await second.send(b'{"execute":"guest-ping","id":2}')
        await second.expect_silence(0.1)  # waits while the first client is served
        await first_client.aclose()
        assert await second.reply() == {"return": {}, "id": 2}
        await second_client.aclose()


async def test_replies_to_one_read_go_out_in_one_write(agent: Agent) -> None:
    client_end, agent_end = trio.testing.memory_stream_pair()
    writes: list[int] = []
    pump = agent_end.send_stream.send_all_hook  # moves the bytes to the client's end

    async def count_writes() -> None:
        writes.append(1)
        if pump is not None:
            await pump()

    agent_end.send_stream.send_all_hook = count_writes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve, agent_end)
        client = StreamClient(client_end)
        await client.send(b'{"execute":"guest-ping"}' * 50)
        for _ in range(50):
            assert await client.reply() == {"return": {}}
        assert len(writes) == 1
        await client_end.aclose()


async def test_memory_is_given_back_after_bulk_data_when_the_host_is_quiet_or_leaves(
    agent_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pause = 0.5  # long enough that the ping below comes in time on a loaded machine
    monkeypatch.setattr("agent.core.memory_release.QUIET", pause)
    releases = 0
    first_release = trio.Event()

    def release() -> None:
        nonlocal releases
        releases += 1
        first_release.set()

    agent = agent_factory(release_memory=release)
    chunk = base64.b64encode(bytes(BULK)).decode()
    async with served(agent) as client:
        for _ in range(20):
            assert "return" in await client.execute("guest-ping")
        opened = await client.execute("guest-file-open", {"path": str(tmp_path / "f"), "mode": "w"})
        write = {"handle": opened["return"], "buf-b64": chunk}
        await trio.sleep(2 * pause)
        assert releases == 0  # small requests: nothing worth giving back
        assert (await client.execute("guest-file-write", write))["return"]["count"] == BULK
        assert "return" in await client.execute("guest-ping")  # small, right after: no release
        assert releases == 0
        with trio.fail_after(5):
            await first_release.wait()  # the host went quiet after bulk data
        assert (await client.execute("guest-file-write", write))["return"]["count"] == BULK
    assert releases == 2  # and once more when it left
