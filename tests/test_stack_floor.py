"""The benchmarks' floor server answers the requests the benchmark sends, correctly:
a floor that answered wrongly or skipped work would be no floor."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.bench_core import Client, connect_cycles, read_file, stack_floor, sync


@pytest.fixture
def floor_socket(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "floor.sock"
    server = subprocess.Popen(stack_floor(sock, tmp_path))
    try:
        yield sock
    finally:
        server.terminate()
        server.wait(10)


def test_floor_server_answers_sync_ping_and_reads(floor_socket: Path, tmp_path: Path) -> None:
    content = os.urandom(10_000)
    source = tmp_path / "source"
    source.write_bytes(content)
    client = Client(floor_socket, time.monotonic() + 30)
    sync(client, 42)
    assert client.call("guest-ping") == {}
    handle = client.call("guest-file-open", path=str(source), mode="r")
    first = client.call("guest-file-read", handle=handle, count=4096)
    assert first["count"] == 4096
    assert not first["eof"]
    assert base64.b64decode(first["buf-b64"]) == content[:4096]
    client.call("guest-file-close", handle=handle)
    assert read_file(client, source, 4096) == len(content)
    with pytest.raises(RuntimeError, match="CommandNotFound"):
        client.call("guest-info")
    client.close()
    assert connect_cycles(floor_socket, 5) > 0


def test_floor_server_is_the_bare_stack() -> None:
    """It imports trio, pydantic and the stdlib, nothing of the agent's."""
    source = Path(stack_floor(Path("x"), Path("."))[1]).read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith("import ")}
    assert imports <= {"base64", "json", "os", "pydantic", "sys", "trio"}
    assert not [line for line in source.splitlines() if line.startswith("from agent")]
