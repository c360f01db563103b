"""The embedding API and the pytest plugin that ships with the package."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing

from agent import Agent, AgentConfig, serve_stream
from agent.core.activity import QUIET_FOR
from agent.core.agent import NotStarted
from agent.host.client import QgaClient

pytestmark = pytest.mark.slow

pytest_plugins = ["pytester"]


async def test_the_pytest_plugin_fixtures(qga_client: QgaClient, qga_agent: Agent) -> None:
    await qga_client.ping()
    info = await qga_client.info()
    assert {c.name for c in info.supported_commands} == {c.name for c in qga_agent.context.registry}


class TestOverriddenConfig:
    @pytest.fixture
    def qga_config(self, tmp_path: Path) -> AgentConfig:
        return AgentConfig(statedir=str(tmp_path), pidfile=None, blocked_rpcs=("guest-ping",))

    async def test_qga_config_can_be_overridden(self, qga_client: QgaClient) -> None:
        assert (await qga_client.commands())["guest-ping"] is False


async def test_building_an_agent_reads_nothing_starting_it_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "qga.state").write_bytes(b"damaged")
    (tmp_path / "qga.state.isfrozen").write_text("[]")  # an earlier agent's, listing nothing
    config = AgentConfig(statedir=str(tmp_path), mount_table=os.devnull, plugins=True)
    agent = Agent(config)
    assert sorted(os.listdir(tmp_path)) == ["qga.state", "qga.state.isfrozen"]
    assert caplog.records == []
    for attribute in ("context", "dispatcher", "plugins"):
        with pytest.raises(
            NotStarted, match=f"Agent.{attribute} exists once the agent has started"
        ):
            getattr(agent, attribute)
    async with agent:
        assert "qga.state.isfrozen lists 0 filesystem(s)" in caplog.text  # read, checked
        assert "is damaged" in caplog.text  # read, and moved aside
        assert [plugin.name for plugin in agent.plugins] == ["procinfo"]
        assert agent.context.registry.get("guest-x-process-list") is not None
    [aside] = os.listdir(tmp_path)  # the marker gone, the damaged state moved aside
    assert aside.startswith("qga.state.corrupt-")
    assert len(agent.context.store) == 0  # what it held stays there to look at
    with pytest.raises(RuntimeError, match="an agent runs once"):
        async with agent:
            pass


async def test_an_embedded_agent_writes_no_state_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No state directory: handle ids from 1000 in memory, nowhere on disk."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_bytes(b"x")
    assert AgentConfig().statedir is None
    client_end, agent_end = trio.testing.memory_stream_pair()
    async with Agent(AgentConfig()) as agent, trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve, agent_end)
        client = QgaClient(client_end, request_timeout=10)
        handles = [await client.execute("guest-file-open", {"path": "f"}) for _ in range(2)]
        await client.aclose()
    assert handles == [1000, 1001]
    assert os.listdir(tmp_path) == ["f"]


async def test_serve_stream_in_one_call(tmp_path: Path) -> None:
    client_end, agent_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            serve_stream, agent_end, AgentConfig(statedir=str(tmp_path), pidfile=None)
        )
        client = QgaClient(client_end, request_timeout=10)
        await client.resync()
        assert await client.sync() > 0
        await client.aclose()


async def test_leaving_the_agent_closes_its_handles(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    async with Agent(AgentConfig(statedir=str(tmp_path), pidfile=None)) as agent:
        client_end, agent_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve, agent_end)
            client = QgaClient(client_end, request_timeout=10)
            await client.execute("guest-file-open", {"path": str(tmp_path / "f")})
            assert len(agent.context.store) == 1
            await client.aclose()
    assert len(agent.context.store) == 0


def test_another_project_can_use_the_plugin(pytester: pytest.Pytester) -> None:
    """A project with pytest-trio gets the fixtures from the installed package alone."""
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        textwrap.dedent(
            """
            async def test_against_trio_qga(qga_client):
                await qga_client.ping()
                assert await qga_client.sync() > 0
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "trio")
    result.assert_outcomes(passed=1)


async def test_serve_transport_inside_the_callers_nursery(tmp_path: Path) -> None:
    sock = tmp_path / "qga.sock"
    config = AgentConfig(method="unix-listen", path=str(sock), statedir=str(tmp_path), pidfile=None)
    async with Agent(config) as agent, trio.open_nursery() as nursery:
        await nursery.start(agent.serve_transports)
        assert sock.exists()  # ready means listening
        client = await QgaClient.connect_unix(str(sock), request_timeout=10)
        await client.ping()
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert not sock.exists()


async def test_serve_reports_when_the_session_has_begun(tmp_path: Path) -> None:
    client_end, agent_end = trio.testing.memory_stream_pair()
    agent = Agent(AgentConfig(statedir=str(tmp_path), pidfile=None))
    async with agent, trio.open_nursery() as nursery:
        await nursery.start(agent.serve, agent_end)
        assert agent._one_client.locked()  # the session holds the one client slot
        await client_end.aclose()


async def test_an_agent_serves_only_while_it_runs(tmp_path: Path) -> None:
    """One lifecycle: ``async with`` runs the agent, as in production."""
    client_end, agent_end = trio.testing.memory_stream_pair()
    with pytest.raises(RuntimeError, match="inside `async with agent`"):
        await Agent(AgentConfig(statedir=str(tmp_path), pidfile=None)).serve(agent_end)
    with pytest.raises(trio.BrokenResourceError):
        await client_end.send_all(b"{}")  # the stream was closed all the same


async def test_commands_beyond_the_first_reply_load_once_it_is_sent(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Started, the agent has the commands of a first request (sync, ping, info);
    its other handler groups load once a session's first reply has gone out
    and the agent is quiet (agent.core.activity), or when a request names one
    of their commands first. The plugins load only when a request names a
    command not loaded yet (or everything is listed): a host that never uses
    them never has them imported."""
    config = AgentConfig(statedir=str(tmp_path), mount_table=os.devnull, plugins=True)
    async with Agent(config) as agent:
        registry = agent.context.registry
        assert not registry.complete_now
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve, server)
            for _ in range(10):  # a host that keeps asking: nothing loads meanwhile
                await client.send_all(b'{"execute":"guest-ping"}\n')
                assert await client.receive_some() == b'{"return": {}}\n'
                await trio.sleep(QUIET_FOR / 2)
                assert not registry.loaded("guest-file-open")
            await trio.sleep(QUIET_FOR * 2)  # quiet: the agent's own groups load
            await trio.testing.wait_all_tasks_blocked()
            assert registry.loaded("guest-file-open")
            assert not registry.complete_now  # the plugins' load still waits
            open_missing = b'{"execute":"guest-file-open","arguments":{"path":"/nonexistent/x"}}\n'
            await client.send_all(open_missing)
            assert b'"error"' in await client.receive_some()
            assert not registry.complete_now
            await client.send_all(b'{"execute":"guest-x-process-list","arguments":{}}\n')
            assert b'"return"' in await client.receive_some()
            assert registry.complete_now
            await client.aclose()

    async with Agent(config) as agent:  # a first request for a command not loaded yet
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve, server)
            await client.send_all(b'{"execute":"guest-x-process-list","arguments":{}}\n')
            assert b'"return"' in await client.receive_some()
            await client.aclose()
