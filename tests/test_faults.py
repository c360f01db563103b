"""Faults in the guest: full disks, damaged state, hostile bytes.

Each case runs against our agent and, where it can, against the real qemu-ga
on the same input, so the difference stays visible: qemu-ga's behaviour is
asserted as found, ours as it should be.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent import Agent
from agent.core.store import COUNTER_END, FIRST_HANDLE, HandleCounter
from tests.support.agents import AgentFactory
from tests.support.agents import served as serve_agent
from tests.support.clients import SocketClient, StreamClient, strict_json
from tests.support.reference import qemu_ga_binary, running_qemu_ga
from tests.support.scratch import small_tmpfs

MiB = 1 << 20


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw_replies(sock: Path, data: bytes, sync_id: int) -> list[bytes]:
    """The reply lines to ``data`` on a fresh connection, up to a guest-sync's.

    ``data`` and the guest-sync are sent from a thread while the replies are
    read: an agent that answers a long input with many replies must not block
    on a full socket. A 0xFF goes before the guest-sync: qemu-ga needs it to
    answer anything after bad input.
    """
    client = SocketClient(sock, timeout=60)
    sync = json.dumps({"execute": "guest-sync", "arguments": {"id": sync_id + 1}}).encode()
    try:
        client.resync(sync_id)
        sender = threading.Thread(target=client.send, args=(data + b"\xff" + sync,))
        sender.start()
        try:
            lines = []
            while (line := client.line()) != json.dumps({"return": sync_id + 1}).encode():
                lines.append(line)
            return lines
        finally:
            sender.join()
    finally:
        client.close()


# ------------------------------------------------------------- disk full --
@pytest.fixture
def full_disks(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two 1 MiB filesystems, one per agent."""
    with small_tmpfs(tmp_path / "ours", "1m") as ours, small_tmpfs(tmp_path / "qemu", "1m") as qemu:
        yield ours, qemu


def write_session(sock: Path, path: Path) -> tuple[list[dict[str, Any]], int]:
    """Open ``path``, write 4 MiB then 1 KiB, close; the replies and the file's size."""
    client = SocketClient(sock)
    try:
        handle = client.execute("guest-file-open", {"path": str(path), "mode": "w"})["return"]
        replies = [
            client.execute("guest-file-write", {"handle": handle, "buf-b64": b64(data)})
            for data in (b"x" * (4 * MiB), b"y" * 1024)
        ]
        client.execute("guest-file-close", {"handle": handle})
    finally:
        client.close()
    return replies, path.stat().st_size


@pytest.mark.qemu_ga
def test_disk_full_answers_what_landed_then_the_error(
    full_disks: tuple[Path, Path], our_socket: Path, qemu_ga_socket: Path
) -> None:
    ours_dir, qemu_dir = full_disks
    ours, landed = write_session(our_socket, ours_dir / "big")
    assert 0 < landed < 4 * MiB
    # As write(2): the short count is what is in the file, the error comes next.
    assert ours == [
        {"return": {"count": landed, "eof": False}},
        {
            "error": {
                "class": "GenericError",
                "desc": "failed to write to file: No space left on device",
            }
        },
    ]
    # qemu-ga answers only the error, although part of the data is in the file.
    theirs, their_landed = write_session(qemu_ga_socket, qemu_dir / "big")
    assert "error" in theirs[0]
    assert "No space left on device" in theirs[0]["error"]["desc"]
    assert their_landed > 0


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """RLIMIT_FSIZE of 1 MiB for this process, SIGXFSZ ignored: writes past it get EFBIG."""
    saved_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    saved_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, saved_limit[1]))
    try:
        yield MiB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved_limit)
        signal.signal(signal.SIGXFSZ, saved_handler)


async def test_file_too_big_answers_what_landed_then_the_error(
    agent_client: StreamClient, tmp_path: Path, file_size_limit: int
) -> None:
    handle = await open_handle(agent_client, tmp_path / "big")
    data = b64(b"z" * (2 * file_size_limit))
    first = await agent_client.execute("guest-file-write", {"handle": handle, "buf-b64": data})
    assert first == {"return": {"count": file_size_limit, "eof": False}}
    again = await agent_client.execute("guest-file-write", {"handle": handle, "buf-b64": data})
    assert again["error"]["desc"] == "failed to write to file: File too large"
    # The error is given once; the next write tries again (and fails again, at once).
    third = await agent_client.execute("guest-file-write", {"handle": handle, "buf-b64": data})
    assert third["error"]["desc"] == "failed to write to file: File too large"
    assert (tmp_path / "big").stat().st_size == file_size_limit


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.EIO], ids=["EDQUOT", "EIO"])
async def test_other_errors_after_progress_are_kept_for_the_next_write(
    agent_client: StreamClient, tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No quota or failing disk here: the file's second write fails as theirs would.
    real_write = os.write
    handle = await open_handle(agent_client, tmp_path / "f")
    calls = 0

    def failing_write(fd: int, data: Any) -> int:
        nonlocal calls
        if os.path.samestat(os.fstat(fd), os.stat(tmp_path / "f")):
            calls += 1
            if calls > 1:
                raise OSError(code, os.strerror(code))
            data = bytes(data[:100])
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    first = await agent_client.execute(
        "guest-file-write", {"handle": handle, "buf-b64": b64(b"a" * 1000)}
    )
    monkeypatch.undo()
    assert first == {"return": {"count": 100, "eof": False}}
    second = await agent_client.execute(
        "guest-file-write", {"handle": handle, "buf-b64": b64(b"b")}
    )
    assert second["error"]["desc"] == f"failed to write to file: {os.strerror(code)}"
    third = await agent_client.execute("guest-file-write", {"handle": handle, "buf-b64": b64(b"b")})
    assert third == {"return": {"count": 1, "eof": False}}
    assert (tmp_path / "f").read_bytes() == b"a" * 100 + b"b"


async def open_handle(client: StreamClient, path: Path, mode: str = "w") -> int:
    reply = await client.execute("guest-file-open", {"path": str(path), "mode": mode})
    assert "return" in reply, reply
    handle: int = reply["return"]
    return handle


# ----------------------------------------------------------- hostile bytes --
INVALID_UTF8_AFTER_ESCAPED_QUOTE = b'{"execute":"guest-ping","id":"x\xfe\\"}\xfe"}\n'


@pytest.mark.qemu_ga
def test_invalid_utf8_in_a_string_gets_one_strict_error(
    our_socket: Path, qemu_ga_socket: Path
) -> None:
    ours = raw_replies(our_socket, INVALID_UTF8_AFTER_ESCAPED_QUOTE, 7000)
    assert [strict_json(line) for line in ours] == [
        {
            "error": {
                "class": "GenericError",
                "desc": "JSON parse error, invalid UTF-8 sequence in string",
            }
        }
    ]
    # qemu-ga answers the same request with several errors.
    theirs = raw_replies(qemu_ga_socket, INVALID_UTF8_AFTER_ESCAPED_QUOTE, 7000)
    assert len(theirs) > 1
    assert all("error" in strict_json(line) for line in theirs)


def test_bad_bytes_outside_strings_are_shown_escaped(our_socket: Path) -> None:
    ours = raw_replies(our_socket, b"\xfe\xc3\n", 7100)
    assert [strict_json(line) for line in ours] == [
        {"error": {"class": "GenericError", "desc": "JSON parse error, stray '\\xfe\\xc3'"}}
    ]


# ---------------------------------------------------------- damaged state --
DAMAGED_STATE = bytes(range(256))[::-1] * 4  # random-looking bytes, not UTF-8, no counter


def qemu_ga_exit_status(statedir: Path, workdir: Path) -> tuple[int, str]:
    """qemu-ga started on ``statedir``: its exit status and log, when it stops by itself."""
    proc = subprocess.run(
        [
            qemu_ga_binary(),
            "-m",
            "unix-listen",
            "-p",
            str(workdir / "qemu-ga.sock"),
            "-t",
            str(statedir),
            "-f",
            str(workdir / "qemu-ga.pid"),
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    return proc.returncode, proc.stderr.decode(errors="replace")


@asynccontextmanager
async def served(make: AgentFactory, statedir: Path) -> AsyncIterator[tuple[Agent, StreamClient]]:
    agent = make(statedir=str(statedir))
    async with serve_agent(agent) as client:
        yield agent, client


async def test_a_damaged_state_file_is_reported_kept_aside_and_handles_go_on(
    agent_factory: AgentFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "qga.state"
    state.write_bytes(DAMAGED_STATE)
    (tmp_path / "f").write_bytes(b"x")
    start = time.time_ns() // 1000
    async with served(agent_factory, tmp_path) as (_, client):
        # Said at start, before any request.
        assert any(
            "is damaged" in record.getMessage() and record.levelname == "ERROR"
            for record in caplog.records
        )
        aside = [name for name in os.listdir(tmp_path) if name.startswith("qga.state.corrupt-")]
        assert len(aside) == 1
        assert (tmp_path / aside[0]).read_bytes() == DAMAGED_STATE
        first = await open_handle(client, tmp_path / "f")
        second = await open_handle(client, tmp_path / "f")
    # From the clock: above anything a counter from 1000 could have reached.
    assert start <= first < second
    assert state.read_text() == f"[global]\nfd_counter={second + 1}\n"


@pytest.mark.qemu_ga
def test_qemu_ga_stops_with_status_0_on_a_damaged_state_file(tmp_path: Path) -> None:
    (tmp_path / "qga.state").write_bytes(DAMAGED_STATE)
    status, log = qemu_ga_exit_status(tmp_path, tmp_path)
    assert status == 0
    assert "failed to load persistent state" in log


@pytest.mark.qemu_ga
async def test_a_missing_state_dir_starts_and_file_opens_give_the_reason(
    agent_factory: AgentFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "f").write_bytes(b"x")
    missing = tmp_path / "missing"
    async with served(agent_factory, missing) as (agent, client):
        assert any("does not exist" in record.getMessage() for record in caplog.records)
        assert await client.execute("guest-ping") == {"return": {}}
        reply = await client.execute("guest-file-open", {"path": str(tmp_path / "f")})
        assert reply["error"]["desc"] == (
            f"failed to save the handle counter in {missing}/qga.state: No such file or directory"
        )
        assert len(agent.context.store) == 0
        missing.mkdir()  # usable again: file commands work at once
        assert await open_handle(client, tmp_path / "f") == 1000
    status, log = qemu_ga_exit_status(tmp_path / "also-missing", tmp_path)
    assert status == 0  # qemu-ga gives up, and says it succeeded
    assert "unable to create state file" in log


@pytest.mark.qemu_ga
async def test_a_read_only_state_dir_starts_and_file_opens_give_the_reason(
    agent_factory: AgentFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as statedir:
        async with served(agent_factory, statedir) as (agent, client):
            assert any("is not writable" in record.getMessage() for record in caplog.records)
            reply = await client.execute("guest-file-open", {"path": str(tmp_path / "f")})
            assert reply["error"]["desc"] == (
                f"failed to save the handle counter in {statedir}/qga.state: Read-only file system"
            )
            assert len(agent.context.store) == 0
        status, log = qemu_ga_exit_status(statedir, tmp_path)
        assert status == 0
        assert "unable to create state file" in log


# ------------------------------------------------------ counter at its end --
def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_the_counter_at_its_end_wraps_and_keeps_no_unreturned_handle(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    (tmp_path / "qga.state").write_text(f"[global]\nfd_counter={COUNTER_END - 1}\n")
    (tmp_path / "f").write_bytes(b"x")
    before = open_descriptors()
    async with served(agent_factory, tmp_path) as (agent, client):
        handles = [await open_handle(client, tmp_path / "f", "r") for _ in range(3)]
        assert handles == [COUNTER_END - 1, FIRST_HANDLE, FIRST_HANDLE + 1]
        assert sorted(opened.handle for opened in agent.context.store) == sorted(handles)
        for handle in handles:
            reply = await client.execute("guest-file-read", {"handle": handle})
            assert reply["return"]["buf-b64"] == b64(b"x")
            assert await client.execute("guest-file-close", {"handle": handle}) == {"return": {}}
    assert open_descriptors() == before


def test_a_wrapped_counter_skips_handles_still_open(tmp_path: Path) -> None:
    (tmp_path / "qga.state").write_text(f"[global]\nfd_counter={COUNTER_END}\n")
    counter = HandleCounter(str(tmp_path))
    assert counter.take(in_use={FIRST_HANDLE, FIRST_HANDLE + 1}) == FIRST_HANDLE + 2
    assert counter.take(in_use={FIRST_HANDLE + 3}) == FIRST_HANDLE + 4


@pytest.mark.qemu_ga
def test_qemu_ga_restarts_handles_at_0_past_a_32_bit_counter(tmp_path: Path) -> None:
    # qemu-ga reads fd_counter as a 32-bit int: past it, handles 0, 1, ... again.
    (tmp_path / "qga.state").write_text(f"[global]\nfd_counter={COUNTER_END - 1}\n")
    (tmp_path / "f").write_bytes(b"x")
    with running_qemu_ga(tmp_path) as sock:
        client = SocketClient(sock)
        try:
            reply = client.execute("guest-file-open", {"path": str(tmp_path / "f")})
        finally:
            client.close()
    assert reply == {"return": 0}


# ------------------------------------------------------- pathological input --
LONG_BAD_MESSAGES = {
    "open brackets": b"[" * (4 * MiB),
    "deep objects": b'{"a":' * MiB,
    "bracket pairs after an error": b'{"a":x,"b":' + b"[]" * (2 * MiB),
}


@pytest.mark.parametrize("data", LONG_BAD_MESSAGES.values(), ids=LONG_BAD_MESSAGES.keys())
def test_a_long_bad_message_gets_one_error(data: bytes, our_socket: Path) -> None:
    # Its cost is measured in benchmarks/bench_pathological.py.
    ours = raw_replies(our_socket, data + b"\n", 7200)
    assert len(ours) == 1
    assert "error" in strict_json(ours[0])


@pytest.mark.qemu_ga
@pytest.mark.parametrize("shape", ["open brackets", "deep objects"])
def test_qemu_ga_answers_a_piece_of_a_long_bad_message_with_many_errors(
    shape: str, qemu_ga_socket: Path
) -> None:
    # 64 KiB of it, to keep qemu-ga's time short (the benchmark gives it the rest).
    theirs = raw_replies(qemu_ga_socket, LONG_BAD_MESSAGES[shape][: 64 * 1024] + b"\n", 7300)
    assert len(theirs) > 10
