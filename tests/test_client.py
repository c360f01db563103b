"""The host-side client library and CLI, against our agent and the real qemu-ga."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from agent.host.client import QgaClient, StreamChannel
from agent.host.errors import AgentError, AgentTimeout, ClientError, CommandNotFound
from tests.support.processes import run_client, running_agent

pytestmark = pytest.mark.slow


@pytest.fixture
def client(qga_client: QgaClient) -> QgaClient:
    """The package's own pytest fixture: a client in sync with a fresh agent."""
    return qga_client


async def test_ping_sync_and_typed_info(client: QgaClient) -> None:
    await client.ping()
    assert await client.sync() > 0
    info = await client.info()
    assert info.version == "0.1.0"
    assert any(c.name == "guest-ping" and c.enabled for c in info.supported_commands)


async def test_errors_carry_their_class(client: QgaClient) -> None:
    with pytest.raises(CommandNotFound) as missing:
        await client.execute("guest-no-such")
    assert missing.value.error_class == "CommandNotFound"
    with pytest.raises(AgentError) as bad:
        await client.execute("guest-sync", {"id": "x"})
    assert bad.value.error_class == "GenericError"
    assert bad.value.desc == "Invalid parameter type for 'id', expected: integer"
    await client.ping()  # still in step


async def test_file_round_trip_is_byte_exact_across_chunks(
    client: QgaClient, tmp_path: Path
) -> None:
    content = random.Random(5).randbytes(9 * 1024 * 1024 + 123)  # three 4 MiB chunks and more
    seen: list[tuple[int, int | None]] = []
    target = str(tmp_path / "copy")
    assert await client.write_file(target, content, lambda d, t: seen.append((d, t))) == len(
        content
    )
    assert (tmp_path / "copy").read_bytes() == content
    assert seen[-1] == (len(content), len(content))
    assert await client.read_file(target) == content
    assert await client.write_file(str(tmp_path / "empty"), b"") == 0
    assert await client.read_file(str(tmp_path / "empty")) == b""


async def test_typed_results_from_the_schema(client: QgaClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    handle = await client.call("guest-file-open", path=str(tmp_path / "f"))
    result = await client.call("guest-file-read", handle=handle, count=2)
    assert (result.count, result.buf_b64, result.eof) == (2, "YWI=", False)


async def test_resync_drops_stale_replies(autojump_clock: trio.abc.Clock) -> None:
    """Stale bytes from an earlier conversation are skipped up to the sync reply."""
    client_end, agent_end = trio.testing.memory_stream_pair()
    qga = QgaClient(client_end, request_timeout=5)

    async def stale_agent() -> None:
        await agent_end.send_all(
            b'{"return": 42}\n{"return": {}}\n{"error": {"class": "X", "desc": "y"}}\n'
        )
        data = await agent_end.receive_some()
        request = json.loads(data.lstrip(b"\xff"))
        await agent_end.send_all(
            b'{"return": 1}\n\xff{"return": %d}\n' % request["arguments"]["id"]
        )
        await agent_end.receive_some()
        await agent_end.send_all(b'{"return": {}}\n')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stale_agent)
        await qga.resync()
        await qga.ping()


async def test_timeout_leaves_the_client_out_of_step_then_resyncs(
    autojump_clock: trio.abc.Clock,
) -> None:
    client_end, _silent_agent = trio.testing.memory_stream_pair()
    channel = StreamChannel(client_end, timeout=2)
    qga = QgaClient(channel)
    channel._in_sync = True  # as after a resync
    with pytest.raises(AgentTimeout):
        await qga.ping()  # nobody answers
    assert not channel._in_sync


async def test_closed_connection_is_a_client_error() -> None:
    client_end, agent_end = trio.testing.memory_stream_pair()
    await agent_end.aclose()
    with pytest.raises(ClientError, match="connection to the agent is broken"):
        await QgaClient(client_end, request_timeout=2).resync()


class ScriptedChannel:
    """A :class:`agent.host.client.Channel` that answers from a script and records what
    was asked; a reply that is an exception is raised."""

    read_chunk = write_chunk = 4

    def __init__(self, replies: dict[str, list[Any]]) -> None:
        self.replies = replies
        self.sent: list[str] = []

    async def exchange(self, command: str, request: dict[str, Any], *, reply: bool) -> Any:
        self.sent.append(command)
        answer = self.replies[command].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {"return": answer}

    async def resync(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_a_failed_copy_raises_its_own_error_not_the_closes() -> None:
    """Through libvirt a timed-out write makes the close time out too: the write's error
    is the one to report."""
    channel = ScriptedChannel(
        {
            "guest-file-open": [1000],
            "guest-file-write": [AgentTimeout("guest-file-write: no reply within 5 s")],
            "guest-file-close": [AgentTimeout("guest-file-close: no reply within 5 s")],
        }
    )
    with pytest.raises(AgentTimeout, match="guest-file-write"):
        await QgaClient(channel).write_file("/tmp/f", b"data")
    assert channel.sent == ["guest-file-open", "guest-file-write", "guest-file-close"]


async def test_a_copy_without_progress_asks_no_size(tmp_path: Path) -> None:
    """The size (two seeks) only serves progress: without it, a copy is open, reads, close."""
    reads = [
        {"count": 4, "buf-b64": "YWJjZA==", "eof": False},
        {"count": 1, "buf-b64": "ZQ==", "eof": True},
    ]
    channel = ScriptedChannel(
        {"guest-file-open": [1000], "guest-file-read": reads, "guest-file-close": [{}]}
    )
    assert await QgaClient(channel).get_file("/g", str(tmp_path / "copy")) == 5
    assert (tmp_path / "copy").read_bytes() == b"abcde"
    assert channel.sent == ["guest-file-open", *["guest-file-read"] * 2, "guest-file-close"]


# ----------------------------------------------------- the CLI, as a process --
@pytest.fixture
def our_agent(tmp_path: Path) -> Iterator[Path]:
    with running_agent(tmp_path) as (_, sock):
        yield sock


def test_cli_ping_sync_info(our_agent: Path) -> None:
    assert run_client(our_agent, "ping").returncode == 0
    assert int(run_client(our_agent, "sync").stdout) > 0
    info = json.loads(run_client(our_agent, "info").stdout)
    assert info["version"] == "0.1.0"


def test_cli_get_put_cat_with_progress(our_agent: Path, tmp_path: Path) -> None:
    content = os.urandom(5 * 1024 * 1024 + 7)
    (tmp_path / "local").write_bytes(content)
    put = run_client(
        our_agent, "--progress", "always", "put", str(tmp_path / "local"), str(tmp_path / "guest")
    )
    assert put.returncode == 0, put.stderr
    assert b"MiB" in put.stderr
    assert (tmp_path / "guest").read_bytes() == content
    get = run_client(our_agent, "get", str(tmp_path / "guest"), str(tmp_path / "back"))
    assert get.returncode == 0
    assert get.stderr == b""  # not a terminal: no progress bar
    assert (tmp_path / "back").read_bytes() == content
    assert run_client(our_agent, "cat", str(tmp_path / "guest")).stdout == content


def test_cli_execute_and_errors(our_agent: Path, tmp_path: Path) -> None:
    result = run_client(our_agent, "execute", "guest-sync", '{"id": 7}')
    assert json.loads(result.stdout) == 7
    missing = run_client(our_agent, "cat", str(tmp_path / "missing"))
    assert missing.returncode == 2
    assert b"GenericError: failed to open file" in missing.stderr
    bad = run_client(our_agent, "execute", "guest-sync", "[1]")
    assert (bad.returncode, bad.stderr) == (
        1,
        b"trio-qga-client: arguments must be a JSON object\n",
    )
    nowhere = run_client(tmp_path / "nothing.sock", "ping")
    assert nowhere.returncode == 1
    assert b"cannot connect" in nowhere.stderr


# ------------------------------------------------------ the real qemu-ga --
@pytest.mark.qemu_ga
async def test_library_against_qemu_ga(qemu_ga_socket: Path, tmp_path: Path) -> None:
    async with await QgaClient.connect_unix(str(qemu_ga_socket), request_timeout=10) as client:
        await client.ping()
        info = await client.info()
        assert info.version.startswith("7.")
        content = os.urandom(6 * 1024 * 1024)
        await client.write_file(str(tmp_path / "f"), content)
        assert await client.read_file(str(tmp_path / "f")) == content
        result = await client.exec("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"])
        assert (result.stdout, result.stderr, result.shell_status) == (b"out\n", b"err\n", 3)
        assert await client.fsfreeze_status() == "thawed"
        with pytest.raises(AgentError):
            await client.read_file(str(tmp_path / "missing"))


@pytest.mark.qemu_ga
def test_cli_exec_against_qemu_ga(qemu_ga_socket: Path) -> None:
    result = run_client(qemu_ga_socket, "exec", "/bin/sh", "-c", "printf hi; exit 4")
    assert (result.returncode, result.stdout) == (4, b"hi")


# ---------------------------------------------- QEMU's own Python client --
def test_qemu_qmp_legacy_client_drives_our_agent(our_agent: Path) -> None:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    qmp = QEMUMonitorProtocol(str(our_agent))
    qmp.connect(negotiate=False)
    try:
        assert qmp.cmd_obj({"execute": "guest-ping"}) == {"return": {}}
        assert qmp.cmd_obj({"execute": "guest-sync", "arguments": {"id": 123}}) == {"return": 123}
        info = qmp.cmd_obj({"execute": "guest-info"})["return"]
        assert "guest-file-open" in {c["name"] for c in info["supported_commands"]}
        error = qmp.cmd_obj({"execute": "guest-nope"})
        assert error["error"]["class"] == "CommandNotFound"
    finally:
        qmp.close()
