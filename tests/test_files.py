"""guest-file-*: every rule of issue 3, over the in-memory fixture and the real CLI."""

from __future__ import annotations

import base64
import os
import random
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import agent.handlers.files as files
from tests.support.agents import AgentFactory, served
from tests.support.clients import SocketClient, StreamClient
from tests.support.processes import running_agent

pytestmark = pytest.mark.slow

GENERIC = "GenericError"


def error(desc: str) -> dict[str, Any]:
    return {"error": {"class": GENERIC, "desc": desc}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def open_file(client: StreamClient, path: Path, mode: str | None = None) -> int:
    arguments: dict[str, Any] = {"path": str(path)}
    if mode is not None:
        arguments["mode"] = mode
    reply = await client.execute("guest-file-open", arguments)
    assert "return" in reply, reply
    handle: int = reply["return"]
    return handle


async def read(client: StreamClient, handle: int, count: int | None = None) -> dict[str, Any]:
    arguments: dict[str, Any] = {"handle": handle}
    if count is not None:
        arguments["count"] = count
    return await client.execute("guest-file-read", arguments)


async def write(client: StreamClient, handle: int, data: bytes, **extra: Any) -> dict[str, Any]:
    return await client.execute(
        "guest-file-write", {"handle": handle, "buf-b64": b64(data), **extra}
    )


# ------------------------------------------------------------------ open --
VALID_MODES = [
    "r",
    "rb",
    "r+",
    "rb+",
    "r+b",
    "w",
    "wb",
    "w+",
    "wb+",
    "w+b",
    "a",
    "ab",
    "a+",
    "ab+",
    "a+b",
]


@pytest.mark.parametrize("mode", VALID_MODES)
async def test_every_fopen_mode_opens(
    agent_client: StreamClient, tmp_path: Path, mode: str
) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    handle = await open_file(agent_client, target, mode)
    assert handle >= 1000
    if mode.startswith("w"):
        assert target.read_bytes() == b""
    else:
        assert target.read_bytes() == b"old"


@pytest.mark.parametrize("mode", ["rw", "x", "", "rr", "R", "r+b+", "wx", "bw"])
async def test_other_modes_are_refused(
    agent_client: StreamClient, tmp_path: Path, mode: str
) -> None:
    reply = await agent_client.execute("guest-file-open", {"path": str(tmp_path), "mode": mode})
    assert reply == error(f"invalid file open mode '{mode}'")


async def test_default_mode_is_read_only(agent_client: StreamClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    handle = await open_file(agent_client, tmp_path / "f")
    assert (await write(agent_client, handle, b"y")) == error(
        "failed to write to file: Bad file descriptor"
    )


async def test_open_errors_carry_the_os_reason(agent_client: StreamClient, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    reply = await agent_client.execute("guest-file-open", {"path": str(missing), "mode": "r"})
    assert reply == error(f"failed to open file '{missing}' (mode: 'r'): No such file or directory")


async def test_a_directory_is_refused(agent_client: StreamClient, tmp_path: Path) -> None:
    reply = await agent_client.execute("guest-file-open", {"path": str(tmp_path)})
    assert reply == error(f"failed to open file '{tmp_path}' (mode: 'r'): Is a directory")


async def test_a_path_with_nul_is_refused_and_nothing_created(
    agent_client: StreamClient, tmp_path: Path
) -> None:
    folder = tmp_path / "nul"
    folder.mkdir()
    reply = await agent_client.execute(
        "guest-file-open", {"path": f"{folder}/a\u0000b", "mode": "w"}
    )
    assert reply == error("invalid path: it contains a NUL character")
    assert os.listdir(folder) == []


@pytest.fixture
def no_umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


async def test_new_files_are_never_world_writable(
    agent_client: StreamClient, tmp_path: Path, no_umask: None
) -> None:
    await open_file(agent_client, tmp_path / "new", "w")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o664


async def test_the_umask_applies_to_new_files(agent_client: StreamClient, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        await open_file(agent_client, tmp_path / "new", "w")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640


# --------------------------------------------------------------- handles --
async def test_handles_start_at_1000_and_are_saved_before_use(
    agent_client: StreamClient, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"")
    first = await open_file(agent_client, tmp_path / "f")
    assert first == 1000
    assert (tmp_path / "qga.state").read_text() == "[global]\nfd_counter=1001\n"
    assert await open_file(agent_client, tmp_path / "f") == 1001


async def test_handles_never_repeat_across_restarts(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"")
    seen = []
    for _ in range(3):
        async with served(agent_factory()) as client:
            seen += [await open_file(client, tmp_path / "f") for _ in range(2)]
    assert seen == list(range(1000, 1006))


async def test_counter_from_qemu_ga_state_file_is_continued(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    (tmp_path / "qga.state").write_text("[global]\nfd_counter=5000\n")
    (tmp_path / "f").write_bytes(b"")
    async with served(agent_factory()) as client:
        assert await open_file(client, tmp_path / "f") == 5000


async def test_unwritable_state_dir_fails_the_open_cleanly(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    statedir = tmp_path / "state"
    statedir.mkdir()
    (tmp_path / "f").write_bytes(b"")
    agent = agent_factory(statedir=str(statedir / "gone"))
    async with served(agent) as client:
        reply = await client.execute("guest-file-open", {"path": str(tmp_path / "f")})
        assert reply["error"]["desc"].startswith("failed to save the handle counter")
        assert len(agent.context.store) == 0  # and the descriptor was closed


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        ("guest-file-read", {}),
        ("guest-file-write", {"buf-b64": ""}),
        ("guest-file-seek", {"offset": 0, "whence": 0}),
        ("guest-file-flush", {}),
        ("guest-file-close", {}),
    ],
)
async def test_unknown_handles(
    agent_client: StreamClient, command: str, arguments: dict[str, Any]
) -> None:
    reply = await agent_client.execute(command, {"handle": 4242, **arguments})
    assert reply == error("handle '4242' has not been found")


async def test_closed_handle_is_gone(agent_client: StreamClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    handle = await open_file(agent_client, tmp_path / "f")
    assert await agent_client.execute("guest-file-close", {"handle": handle}) == {"return": {}}
    assert await read(agent_client, handle) == error(f"handle '{handle}' has not been found")


async def test_limit_on_open_handles(agent_factory: AgentFactory, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    async with served(agent_factory(max_handles=2)) as client:
        first = await open_file(client, tmp_path / "f")
        await open_file(client, tmp_path / "f")
        reply = await client.execute("guest-file-open", {"path": str(tmp_path / "f")})
        assert reply == error(
            "too many open files: the limit of 2 handles is reached;"
            " close some with guest-file-close"
        )
        await client.execute("guest-file-close", {"handle": first})
        await open_file(client, tmp_path / "f")


# ------------------------------------------------------------------ read --
async def test_read_counts_and_eof_as_qemu_ga(agent_client: StreamClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello world")
    handle = await open_file(agent_client, tmp_path / "f")

    async def read_back(count: int | None) -> tuple[bytes, bool]:
        reply = (await read(agent_client, handle, count))["return"]
        data = base64.b64decode(reply["buf-b64"])
        assert reply["count"] == len(data)
        return data, reply["eof"]

    assert await read_back(5) == (b"hello", False)
    assert await read_back(6) == (b" world", False)  # exactly to the end: no eof yet
    assert await read_back(6) == (b"", True)
    assert await read_back(0) == (b"", False)  # count 0 reads nothing, hits nothing
    await agent_client.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": 0})
    assert await read_back(None) == (b"hello world", True)  # default count 4096


async def test_read_default_count_is_4096(agent_client: StreamClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10000)
    handle = await open_file(agent_client, tmp_path / "f")
    assert (await read(agent_client, handle))["return"]["count"] == 4096


@pytest.mark.parametrize("count", [-1, 48 * 1024 * 1024 + 1, 2**40])
async def test_read_count_limits(agent_client: StreamClient, tmp_path: Path, count: int) -> None:
    (tmp_path / "f").write_bytes(b"")
    handle = await open_file(agent_client, tmp_path / "f")
    assert await read(agent_client, handle, count) == error(
        f"value '{count}' is invalid for argument count"
    )


async def test_read_of_48_mib_is_allowed(agent_client: StreamClient, tmp_path: Path) -> None:
    content = random.Random(1).randbytes(48 * 1024 * 1024)
    (tmp_path / "f").write_bytes(content)
    handle = await open_file(agent_client, tmp_path / "f")
    reply = (await read(agent_client, handle, 48 * 1024 * 1024))["return"]
    assert reply["count"] == len(content)
    assert base64.b64decode(reply["buf-b64"]) == content
    assert reply["eof"] is False


async def test_read_on_a_write_only_handle(agent_client: StreamClient, tmp_path: Path) -> None:
    handle = await open_file(agent_client, tmp_path / "f", "a")
    assert await read(agent_client, handle) == error("failed to read file: Bad file descriptor")


# ----------------------------------------------------------------- write --
async def test_write_and_count(agent_client: StreamClient, tmp_path: Path) -> None:
    handle = await open_file(agent_client, tmp_path / "f", "w")
    assert await write(agent_client, handle, b"hello") == {"return": {"count": 5, "eof": False}}
    assert await write(agent_client, handle, b"hello", count=2) == {
        "return": {"count": 2, "eof": False}
    }
    assert await write(agent_client, handle, b"") == {"return": {"count": 0, "eof": False}}
    for bad in (6, -1):
        assert await write(agent_client, handle, b"hello", count=bad) == error(
            f"value '{bad}' is invalid for argument count"
        )
    assert (tmp_path / "f").read_bytes() == b"hellohe"


@pytest.mark.parametrize(
    ("text", "desc"),
    [
        ("not base64!", "Base64 data contains invalid characters"),
        ("aGVs bG8=", "Base64 data contains invalid characters"),
        ("aGVsbG8\n", "Base64 data contains invalid characters"),
        ("\u00e9\u00e9\u00e9\u00e9", "Base64 data contains invalid characters"),
        ("aGVsbG8", "Base64 data is malformed: incorrect padding"),
        ("aGVsbG8=aGk=", "Base64 data is malformed: excess data after padding"),
        ("=aGk", "Base64 data is malformed: leading padding not allowed"),
    ],
)
async def test_malformed_base64_is_refused_whole(
    agent_client: StreamClient, tmp_path: Path, text: str, desc: str
) -> None:
    handle = await open_file(agent_client, tmp_path / "f", "w")
    reply = await agent_client.execute("guest-file-write", {"handle": handle, "buf-b64": text})
    assert reply == error(desc)
    assert (tmp_path / "f").read_bytes() == b""  # nothing half decoded, nothing written


async def test_append_mode_writes_at_the_end(agent_client: StreamClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    handle = await open_file(agent_client, tmp_path / "f", "a+")
    await agent_client.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": "set"})
    await write(agent_client, handle, b"XYZ")
    assert (tmp_path / "f").read_bytes() == b"abcXYZ"


# ------------------------------------------------------------------ seek --
async def test_seek(agent_client: StreamClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    handle = await open_file(agent_client, tmp_path / "f")

    async def seek(offset: int, whence: object) -> dict[str, Any]:
        return await agent_client.execute(
            "guest-file-seek", {"handle": handle, "offset": offset, "whence": whence}
        )

    assert await seek(3, 0) == {"return": {"eof": False, "position": 3}}
    assert await seek(2, "cur") == {"return": {"eof": False, "position": 5}}
    assert await seek(-1, 2) == {"return": {"eof": False, "position": 9}}
    assert await seek(5, "end") == {"return": {"eof": False, "position": 15}}
    assert await seek(4, "set") == {"return": {"eof": False, "position": 4}}
    assert (await read(agent_client, handle, 2))["return"]["buf-b64"] == b64(b"45")
    assert await seek(-100, "cur") == error("failed to seek file: Invalid argument")
    assert await seek(0, 5) == error("invalid whence code 5")
    assert await seek(0, "middle") == error("Parameter 'whence' does not accept value 'middle'")


# ----------------------------------------------------------------- flush --
async def test_flush_makes_data_visible_and_durable(
    agent_client: StreamClient, tmp_path: Path
) -> None:
    handle = await open_file(agent_client, tmp_path / "f", "w")
    await write(agent_client, handle, b"durable")
    assert await agent_client.execute("guest-file-flush", {"handle": handle}) == {"return": {}}
    assert (tmp_path / "f").read_bytes() == b"durable"


async def test_binary_round_trip_is_byte_exact(agent_client: StreamClient, tmp_path: Path) -> None:
    content = bytes(range(256)) * 300 + random.Random(7).randbytes(300_000)
    handle = await open_file(agent_client, tmp_path / "bin", "wb+")
    for start in range(0, len(content), 65_000):
        chunk = content[start : start + 65_000]
        assert (await write(agent_client, handle, chunk))["return"]["count"] == len(chunk)
    await agent_client.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": "set"})
    back = b""
    while True:
        reply = (await read(agent_client, handle, 100_000))["return"]
        back += base64.b64decode(reply["buf-b64"])
        if reply["eof"]:
            break
    assert back == content
    assert (tmp_path / "bin").read_bytes() == content


# ---------------------------------------------------- FIFOs and devices --
async def test_a_fifo_never_hangs_the_agent(agent_client: StreamClient, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with trio.fail_after(5):
        reader = await open_file(agent_client, fifo, "r")  # no writer: qemu-ga blocks here
        assert await read(agent_client, reader) == {  # no writer: end of file
            "return": {"count": 0, "buf-b64": "", "eof": True}
        }
        writer = await open_file(agent_client, fifo, "w")
        assert await read(agent_client, reader) == {  # a writer, no data yet: not an error
            "return": {"count": 0, "buf-b64": "", "eof": False}
        }
        assert (await write(agent_client, writer, b"ping"))["return"]["count"] == 4
        assert (await read(agent_client, reader))["return"]["buf-b64"] == b64(b"ping")


async def test_a_fifo_without_reader_fails_the_write_open_at_once(
    agent_client: StreamClient, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with trio.fail_after(5):
        reply = await agent_client.execute("guest-file-open", {"path": str(fifo), "mode": "w"})
    assert reply == error(f"failed to open file '{fifo}' (mode: 'w'): No such device or address")


async def test_a_full_pipe_gives_a_short_write(agent_client: StreamClient, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    keep_open = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that never reads
    try:
        writer = await open_file(agent_client, fifo, "w")
        reply = (await write(agent_client, writer, b"x" * (4 << 20)))["return"]
        assert 0 < reply["count"] < 4 << 20  # what the pipe took, not an error
    finally:
        os.close(keep_open)


async def test_reading_a_device(agent_client: StreamClient) -> None:
    handle = await open_file(agent_client, Path("/dev/zero"))
    assert (await read(agent_client, handle, 16))["return"]["buf-b64"] == b64(bytes(16))


async def test_big_reads_leave_the_agent_responsive(
    agent_client: StreamClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read over INLINE_IO_LIMIT runs in a thread: Trio keeps running meanwhile."""
    (tmp_path / "f").write_bytes(b"x" * 200_000)
    started, release = threading.Event(), threading.Event()
    released: list[bool] = []
    real_read = files._read

    def slow_read(opened: Any, count: int) -> Any:
        started.set()
        released.append(release.wait(10))
        return real_read(opened, count)

    async def big_read() -> None:
        reply = await read(agent_client, handle, 200_000)
        assert reply["return"]["count"] == 200_000

    monkeypatch.setattr(files, "_read", slow_read)
    handle = await open_file(agent_client, tmp_path / "f")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(big_read)
        assert await trio.to_thread.run_sync(started.wait, 10)
        # The read is stuck in its thread, and this task runs: so does the event loop.
        release.set()
    assert released == [True]  # the read went on because it was released, not timed out
    small = await read(agent_client, handle, 10)
    assert small["return"]["eof"] is True


# ------------------------------------------------ the real agent process --
def test_disconnect_mid_transfer_keeps_serving_and_the_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with running_agent(tmp_path) as (_, sock):
        client = SocketClient(sock)
        handle = client.execute("guest-file-open", {"path": str(target), "mode": "w"})["return"]
        for i in range(10):
            reply = client.execute(
                "guest-file-write", {"handle": handle, "buf-b64": b64(bytes([i]) * 100_000)}
            )
            assert reply == {"return": {"count": 100_000, "eof": False}}
        half = b'{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":"' % handle
        client.send(half + b"QUJD" * 50_000)  # and gone, mid-request
        client.close()
        other = SocketClient(sock)
        assert other.execute("guest-ping") == {"return": {}}
        assert other.execute("guest-file-close", {"handle": handle}) == {"return": {}}
        other.close()
    assert target.read_bytes() == b"".join(bytes([i]) * 100_000 for i in range(10))


def test_sigterm_closes_handles_and_loses_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with running_agent(tmp_path) as (proc, sock):
        client = SocketClient(sock)
        handle = client.execute("guest-file-open", {"path": str(target), "mode": "w"})["return"]
        assert (
            client.execute("guest-file-write", {"handle": handle, "buf-b64": b64(b"kept")})[
                "return"
            ]["count"]
            == 4
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        client.close()
    assert target.read_bytes() == b"kept"


def test_peak_memory_of_a_48_mib_read(tmp_path: Path) -> None:
    """The agent's peak resident memory during a 48 MiB read stays under 4x the chunk."""
    chunk = 48 * 1024 * 1024
    target = tmp_path / "big"
    target.write_bytes(random.Random(3).randbytes(chunk))
    with running_agent(tmp_path) as (proc, sock):
        client = SocketClient(sock, timeout=60)
        handle = client.execute("guest-file-open", {"path": str(target)})["return"]
        client.execute("guest-file-read", {"handle": handle, "count": 10})
        idle = _status_kib(proc.pid, "VmRSS")
        client.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": 0})
        reply = client.execute("guest-file-read", {"handle": handle, "count": chunk})
        assert reply["return"]["count"] == chunk
        peak = _status_kib(proc.pid, "VmHWM")
        client.close()
    assert (peak - idle) * 1024 < 4 * chunk, f"peak {peak} KiB, idle {idle} KiB"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_max_handles_option(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with running_agent(tmp_path, "--max-handles", "1") as (_, sock):
        client = SocketClient(sock)
        assert "return" in client.execute("guest-file-open", {"path": str(tmp_path / "f")})
        reply = client.execute("guest-file-open", {"path": str(tmp_path / "f")})
        assert "the limit of 1 handles is reached" in reply["error"]["desc"]
        client.close()
