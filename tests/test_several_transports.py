"""Several transports in one agent (issue 25): sessions side by side on the agent's
one state, and failures that stay with their transport.

The agent runs in this process on two unix-listen sockets (``serve_transports``),
a client connected on each. What is shown: both are served at once (with one
transport, the second client waits: ``test_cli.py``); handles, the freeze and
its write gate are shared; a hung or bulky request on one transport does not
hold up the other; a transport that breaks ends alone. Time is never
asserted, only order: the ping answered while the other request is pending.
Freezes are real, on the scratch filesystems only.
"""

from __future__ import annotations

import base64
import errno
import functools
import json
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from agent import Agent
from agent.core.bulk import PIECE, encode_big_payloads
from agent.errors import GenericError
from agent.handlers import files as files_module
from agent.system.fsfreeze.gate import WriteGate
from agent.transports import serve as transports_module
from agent.transports.serve import TransportError
from agent.wire.encoder import ReturnReply, encode_reply
from agent.wire.payload import Base64Payload
from tests.support.agents import AgentFactory
from tests.support.clients import Reply, StreamClient
from tests.support.scratch import Scratch

PONG: Reply = {"return": {}}


def disabled(name: str) -> Reply:
    """The reply to a command refused while frozen (qemu-ga 9.1's words)."""
    desc = f"Command {name} has been disabled: the command is not allowed"
    return {"error": {"class": "CommandNotFound", "desc": desc}}


def unix(path: Path) -> str:
    return f"unix-listen:{path}"


async def connect(path: Path) -> StreamClient:
    return StreamClient(await trio.open_unix_socket(str(path)))


@asynccontextmanager
async def serving(agent: Agent, **options: Any) -> AsyncIterator[trio.Nursery]:
    """``agent`` running its transports (started: every one that can open is open)."""
    async with agent, trio.open_nursery() as nursery:
        await nursery.start(functools.partial(agent.serve_transports, **options))
        yield nursery
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def two_clients(
    agent_factory: AgentFactory, tmp_path: Path, **config: Any
) -> AsyncIterator[tuple[StreamClient, StreamClient]]:
    """An agent on two unix sockets, and a client connected on each."""
    first, second = tmp_path / "first.sock", tmp_path / "second.sock"
    agent = agent_factory(transports=(unix(first), unix(second)), **config)
    async with serving(agent):
        one, two = await connect(first), await connect(second)
        yield one, two
        await one.stream.aclose()
        await two.stream.aclose()


async def test_two_transports_serve_side_by_side(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    async with two_clients(agent_factory, tmp_path) as (one, two):
        # Both sessions open at once: on one transport the second would wait.
        assert await one.execute("guest-ping") == PONG
        assert await two.execute("guest-ping") == PONG
        # guest-sync ids are each session's own, interleaved as they may be.
        await one.send(b'{"execute":"guest-sync","arguments":{"id":111}}')
        await two.send(b'{"execute":"guest-sync","arguments":{"id":222}}')
        assert await two.reply() == {"return": 222}
        assert await one.reply() == {"return": 111}


async def test_a_handle_opened_on_one_is_read_and_closed_on_the_other(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"shared handles")
    async with two_clients(agent_factory, tmp_path) as (one, two):
        handle = (await one.execute("guest-file-open", {"path": str(data)}))["return"]
        read = await two.execute("guest-file-read", {"handle": handle, "count": 100})
        assert base64.b64decode(read["return"]["buf-b64"]) == b"shared handles"
        assert await two.execute("guest-file-close", {"handle": handle}) == {"return": {}}
        gone = {"error": {"class": "GenericError", "desc": f"handle '{handle}' has not been found"}}
        assert await one.execute("guest-file-read", {"handle": handle}) == gone


async def test_a_program_started_on_one_is_followed_on_the_other(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    async with two_clients(agent_factory, tmp_path) as (one, two):
        arguments = {"path": "/bin/echo", "arg": ["side by side"], "capture-output": True}
        pid = (await one.execute("guest-exec", arguments))["return"]["pid"]
        with trio.fail_after(10):
            while True:  # polled, as a host polls
                status = (await two.execute("guest-exec-status", {"pid": pid}))["return"]
                if status["exited"]:
                    break
                await trio.sleep(0.01)
        assert base64.b64decode(status["out-data"]) == b"side by side\n"
        # Reaped once reported, for both: qemu-ga forgets a pid once it said it exited.
        gone = await one.execute("guest-exec-status", {"pid": pid})
        assert gone["error"]["class"] == "GenericError"


async def test_a_close_waits_for_the_call_under_way_on_the_handle(
    agent_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close from one session while the other's write runs in a worker thread:
    the descriptor stays open under the write (its number never names another
    file meanwhile), the write completes, and the handle is gone for both."""
    target = tmp_path / "target"
    release = threading.Event()
    started = threading.Event()
    blocked_write = holding(files_module._write, started, release)
    monkeypatch.setattr(files_module, "_write", blocked_write)
    payload = os.urandom(100 * 1024)  # over INLINE_IO_LIMIT: a worker thread
    async with two_clients(agent_factory, tmp_path) as (one, two):
        opened = await one.execute("guest-file-open", {"path": str(target), "mode": "w"})
        handle = opened["return"]
        await one.send(write_request(handle, payload))
        assert await trio.to_thread.run_sync(started.wait, 10)
        assert await two.execute("guest-file-close", {"handle": handle}) == {"return": {}}
        other = tmp_path / "other"
        reopened = await two.execute("guest-file-open", {"path": str(other), "mode": "w"})
        assert "return" in reopened  # may take the number the close would have freed
        release.set()
        assert await one.reply() == {"return": {"count": len(payload), "eof": False}}
        assert target.read_bytes() == payload
        assert other.read_bytes() == b""  # nothing of the write went there


def holding(
    function: Callable[..., Any], started: threading.Event, release: threading.Event
) -> Callable[..., Any]:
    """``function``, which first says it started and waits for ``release`` (in its thread)."""

    def wrapper(*args: Any) -> Any:
        started.set()
        assert release.wait(20)
        return function(*args)

    return wrapper


def write_request(handle: int, data: bytes) -> bytes:
    arguments = {"handle": handle, "buf-b64": base64.b64encode(data).decode()}
    return json.dumps({"execute": "guest-file-write", "arguments": arguments}).encode()


async def test_a_client_that_breaks_off_leaves_the_other_transport_serving(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    async with two_clients(agent_factory, tmp_path) as (one, two):
        await one.send(b'{"execute":"guest-file-open","arguments":{"pa')
        connection = one.stream.socket  # type: ignore[attr-defined]
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await one.stream.aclose()  # a reset, half a request sent
        assert await two.execute("guest-ping") == PONG
        again = await connect(tmp_path / "first.sock")  # the first transport serves on
        assert await again.execute("guest-ping") == PONG
        await again.stream.aclose()


class BreakableListener(socket.socket):
    """A listening unix socket whose accept fails once it is broken: the
    transport's own failure, not a client's."""

    def __init__(self, path: Path) -> None:
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM)
        self.bind(str(path))
        self.listen(8)
        self.broken = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self.broken:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return super().accept()

    async def break_now(self, caplog: pytest.LogCaptureFixture, says: str) -> None:
        """Break it, and wake its transport with a client that is never served;
        until the log ``says`` so."""
        self.broken = True
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(self.getsockname())
            with trio.fail_after(10):
                while says not in caplog.text:  # noqa: ASYNC110 (the log: no event to wait on)
                    await trio.sleep(0.01)


@pytest.fixture
def breakable(tmp_path: Path) -> Iterator[tuple[BreakableListener, BreakableListener]]:
    with (
        BreakableListener(tmp_path / "a.sock") as first,
        BreakableListener(tmp_path / "b.sock") as second,
    ):
        yield first, second


async def test_a_transport_that_fails_ends_alone_and_the_last_ends_the_agent(
    agent_factory: AgentFactory,
    tmp_path: Path,
    breakable: tuple[BreakableListener, BreakableListener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = breakable
    agent = agent_factory()
    last = pytest.RaisesExc(TransportError, match=r"b\.sock, socket from systemd: Invalid argument")
    with pytest.RaisesGroup(last):
        async with agent, trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(agent.serve_transports, listeners=[first, second])
            )
            alone = "a.sock, socket from systemd: Invalid argument; 1 other transport(s) still"
            await first.break_now(caplog, alone)
            client = await connect(tmp_path / "b.sock")
            assert await client.execute("guest-ping") == PONG
            await client.stream.aclose()
            second.broken = True  # the last one: serve_transports ends, raising
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waking:
                waking.connect(second.getsockname())
                await trio.sleep_forever()


async def test_a_channel_that_cannot_open_is_left_out_and_the_others_serve(
    agent_factory: AgentFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock, absent = tmp_path / "qga.sock", tmp_path / "no-such-port"
    agent = agent_factory(transports=(f"virtio-serial:{absent}", unix(sock)))
    async with serving(agent):
        assert f"virtio-serial {absent}: No such file or directory; serving the other" in (
            caplog.text
        )
        client = await connect(sock)
        assert await client.execute("guest-ping") == PONG
        await client.stream.aclose()


async def test_when_no_channel_can_open_each_says_why(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    first, second = tmp_path / "port-a", tmp_path / "port-b"
    agent = agent_factory(transports=(f"virtio-serial:{first}", f"isa-serial:{second}"))
    async with agent:
        with pytest.RaisesGroup(
            pytest.RaisesExc(TransportError, match=f"virtio-serial {first}: No such file"),
            pytest.RaisesExc(TransportError, match=f"isa-serial {second}: No such file"),
            match="no transport could open",
        ):
            await agent.serve_transports()


async def test_with_retry_an_absent_channel_is_waited_for_without_holding_the_others(
    agent_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transports_module, "RETRY_INTERVAL", 0.05)
    sock, link = tmp_path / "qga.sock", tmp_path / "ttyS9"
    agent = agent_factory(transports=(f"isa-serial:{link}", unix(sock)), retry_path=True)
    master, slave = os.openpty()
    try:
        async with serving(agent):
            client = await connect(sock)  # served while the line is absent
            assert await client.execute("guest-ping") == PONG
            link.symlink_to(os.ttyname(slave))
            os.set_blocking(master, False)
            line = StreamClient(trio.lowlevel.FdStream(os.dup(master)))
            with trio.fail_after(10):
                while True:  # until the agent has opened the line and set it raw
                    await line.send(b'\xff{"execute":"guest-ping","id":9}\n')
                    with trio.move_on_after(0.2):
                        if (await line.line()).endswith(b'{"return": {}, "id": 9}'):
                            break
            assert await client.execute("guest-ping") == PONG  # the socket all along
            await client.stream.aclose()
            await line.stream.aclose()
    finally:
        os.close(master)
        os.close(slave)


# ------------------------------------------------------------- hung and bulk --


async def test_a_hung_command_on_one_transport_leaves_the_other_answering(
    agent_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for a hung mount: a read whose worker thread does not come
    back (the FUSE version, in a process: ``test_several_transports_daemon.py``)."""
    release, started = threading.Event(), threading.Event()
    monkeypatch.setattr(files_module, "_read", holding(files_module._read, started, release))
    data = tmp_path / "data"
    data.write_bytes(b"x" * (200 * 1024))
    async with two_clients(agent_factory, tmp_path) as (one, two):
        handle = (await one.execute("guest-file-open", {"path": str(data)}))["return"]
        await one.send(
            b'{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d}}'
            % (handle, 200 * 1024)
        )
        assert await trio.to_thread.run_sync(started.wait, 10)
        for _ in range(3):
            assert await two.execute("guest-ping") == PONG
        await one.expect_silence(0.1)  # the read is still pending, the pings were not
        release.set()
        assert (await one.reply())["return"]["count"] == 200 * 1024


async def test_a_bulk_reply_on_one_transport_does_not_hold_up_the_other(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    """A 48 MiB read whose reply (64 MiB) its host is slow to take: the ping on
    the other transport is answered while it is still being sent."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(48 << 20))
    async with two_clients(agent_factory, tmp_path) as (one, two):
        handle = (await one.execute("guest-file-open", {"path": str(big)}))["return"]
        await one.send(
            b'{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d}}'
            % (handle, 48 << 20)
        )
        head = b'{"return": {"count": %d, "buf-b64": "' % (48 << 20)
        assert await one.stream.receive_some(len(head)) == head  # the reply has begun
        assert await two.execute("guest-ping") == PONG
        with trio.fail_after(120):
            tail = await line_end(one.stream)
        assert tail.endswith(b'", "eof": false}}\n')


async def line_end(stream: trio.abc.Stream) -> bytes:
    """The last bytes of a long reply line, read to its newline without keeping it."""
    tail = b""
    while not tail.endswith(b"\n"):
        data = await stream.receive_some(1 << 20)
        assert data, "the agent closed the stream"
        tail = (tail + data)[-200:]
    return tail


async def test_big_payloads_are_encoded_in_pieces_between_other_tasks() -> None:
    data = os.urandom(5 * PIECE + 7)
    other_task_ran = 0
    done = False

    async def other() -> None:
        nonlocal other_task_ran
        while not done:
            other_task_ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        value = await encode_big_payloads({"count": len(data), "buf-b64": Base64Payload(data)})
        done = True
    assert other_task_ran >= 5  # once per piece at least
    payload = value["buf-b64"]
    assert isinstance(payload, Base64Payload)
    assert payload.encoded is not None
    assert len(payload.encoded) == 6
    whole = encode_reply(ReturnReply({"buf-b64": Base64Payload(data)}, 1))
    assert b"".join(encode_reply(ReturnReply(value, 1))).endswith(b"".join(whole)[-100:])
    assert b"".join(payload.encoded) == base64.b64encode(data)


# ----------------------------------------------------------------- fsfreeze --


@pytest.fixture
def scratch_config(scratch: Scratch) -> dict[str, Any]:
    """Agents that may freeze the scratch filesystems, nothing else."""
    return {"mount_table": str(scratch.mount_table)}


async def test_two_concurrent_freezes_one_wins_the_other_is_disabled(
    agent_factory: AgentFactory,
    tmp_path: Path,
    scratch: Scratch,
    scratch_config: dict[str, Any],
) -> None:
    async with two_clients(agent_factory, tmp_path, **scratch_config) as (one, two):
        await one.send(b'{"execute":"guest-fsfreeze-freeze"}')
        await two.send(b'{"execute":"guest-fsfreeze-freeze"}')
        replies = [await one.reply(), await two.reply()]
        winners = [reply for reply in replies if "return" in reply]
        assert winners == [{"return": len(scratch.freezable)}]
        assert disabled("guest-fsfreeze-freeze") in replies
        frozen = {"return": "frozen"}
        assert await one.execute("guest-fsfreeze-status") == frozen
        assert await two.execute("guest-fsfreeze-status") == frozen
        loser = two if replies[0] in winners else one
        assert await loser.execute("guest-fsfreeze-thaw") == {"return": len(scratch.freezable)}
        for client in (one, two):
            assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}


def blocking_hook(tmp_path: Path) -> tuple[Path, Path]:
    """A freeze hook that waits (20 s at most) for the release file; the hook and that file."""
    release = tmp_path / "release-hook"
    hook = tmp_path / "fsfreeze-hook"
    hook.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = freeze ] || exit 0\n'
        f"for _ in $(seq 400); do [ -e {release} ] && exit 0; sleep 0.05; done\n"
        "exit 1\n"
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hook, release


async def test_while_one_session_freezes_the_other_is_held_to_the_frozen_state(
    agent_factory: AgentFactory,
    tmp_path: Path,
    scratch: Scratch,
    scratch_config: dict[str, Any],
) -> None:
    """The freeze of the first session is under way (its hook waits): the second
    session's freeze is refused at once, as is any command not allowed while
    frozen; its ping is answered."""
    hook, release = blocking_hook(tmp_path)
    target = scratch.ext4 / "written-by-two"
    async with two_clients(agent_factory, tmp_path, fsfreeze_hook=str(hook), **scratch_config) as (
        one,
        two,
    ):
        handle = (await two.execute("guest-file-open", {"path": str(target), "mode": "w"}))[
            "return"
        ]
        await one.send(b'{"execute":"guest-fsfreeze-freeze"}')
        with trio.fail_after(10):  # until the freeze has begun
            frozen = {"return": "frozen"}
            while await two.execute("guest-fsfreeze-status") != frozen:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert await two.execute("guest-fsfreeze-freeze") == disabled("guest-fsfreeze-freeze")
        write = {"handle": handle, "buf-b64": "YWJj"}
        assert await two.execute("guest-file-write", write) == disabled("guest-file-write")
        assert await two.execute("guest-ping") == PONG
        await one.expect_silence(0.1)  # the first freeze is still under way
        release.touch()
        assert await one.reply() == {"return": len(scratch.freezable)}
        assert await two.execute("guest-fsfreeze-thaw") == {"return": len(scratch.freezable)}
        assert await one.execute("guest-file-write", write) == {
            "return": {"count": 3, "eof": False}
        }
    assert target.read_bytes() == b"abc"


async def test_a_write_under_way_completes_before_the_freeze(
    agent_factory: AgentFactory,
    tmp_path: Path,
    scratch: Scratch,
    scratch_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Session one's write is in its worker thread when session two freezes:
    the freeze waits for it, and the data is all on disk before FIFREEZE."""
    release, started = threading.Event(), threading.Event()
    monkeypatch.setattr(files_module, "_write", holding(files_module._write, started, release))
    target = scratch.ext4 / "under-way"
    payload = os.urandom(300 * 1024)
    async with two_clients(agent_factory, tmp_path, **scratch_config) as (one, two):
        opened = await one.execute("guest-file-open", {"path": str(target), "mode": "w"})
        await one.send(write_request(opened["return"], payload))
        assert await trio.to_thread.run_sync(started.wait, 10)
        await two.send(b'{"execute":"guest-fsfreeze-freeze"}')
        await two.expect_silence(0.3)  # waiting for the write
        release.set()
        assert await one.reply() == {"return": {"count": len(payload), "eof": False}}
        assert await two.reply() == {"return": len(scratch.freezable)}
        assert target.stat().st_size == len(payload)  # landed before the freeze
        assert await one.execute("guest-fsfreeze-thaw") == {"return": len(scratch.freezable)}
    assert target.read_bytes() == payload


async def test_a_write_that_does_not_end_in_time_fails_the_freeze(
    agent_factory: AgentFactory,
    tmp_path: Path,
    scratch: Scratch,
    scratch_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The freeze waits for writes under way up to the filesystem deadline, then
    fails having frozen nothing; the write, once it ends, lands then."""
    release, started = threading.Event(), threading.Event()
    monkeypatch.setattr(files_module, "_write", holding(files_module._write, started, release))
    target = scratch.ext4 / "late"
    payload = os.urandom(100 * 1024)
    config = {"fs_timeout": 0.5, **scratch_config}
    caplog.set_level(logging.INFO)
    async with two_clients(agent_factory, tmp_path, **config) as (one, two):
        opened = await one.execute("guest-file-open", {"path": str(target), "mode": "w"})
        await one.send(write_request(opened["return"], payload))
        assert await trio.to_thread.run_sync(started.wait, 10)
        assert await two.execute("guest-fsfreeze-freeze") == {
            "error": {
                "class": "GenericError",
                "desc": "fsfreeze: 1 guest-file write(s) still under way after 0.5 s;"
                " nothing was frozen",
            }
        }
        assert await two.execute("guest-fsfreeze-status") == {"return": "thawed"}
        assert "did not answer within 0.5 s" in (await one.reply())["error"]["desc"]
        release.set()
        with trio.fail_after(10):  # the abandoned write ends in its thread
            while "a call abandoned on" not in caplog.text:  # noqa: ASYNC110 (the log)
                await trio.sleep(0.01)
        assert target.stat().st_size == len(payload)
        assert await two.execute("guest-fsfreeze-freeze") == {"return": len(scratch.freezable)}
        assert await two.execute("guest-fsfreeze-thaw") == {"return": len(scratch.freezable)}


async def test_the_write_gate_refuses_once_closed_and_drains() -> None:
    gate = WriteGate()
    release = threading.Event()
    entered = threading.Event()

    def write() -> None:
        gate.enter()
        try:
            entered.set()
            release.wait(10)
        finally:
            gate.leave()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(trio.to_thread.run_sync, write))
        assert await trio.to_thread.run_sync(entered.wait, 10)
        gate.close()
        with pytest.raises(GenericError, match=r"being frozen .* nothing was written"):
            gate.enter()
        with trio.move_on_after(0.1):
            await gate.drained()
        assert gate.inside == 1
        release.set()
        with trio.fail_after(10):
            await gate.drained()
        assert gate.inside == 0
    gate.open()
    gate.enter()
    assert gate.inside == 1
    gate.leave()
