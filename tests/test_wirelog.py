"""The -v log of requests and replies: qemu-ga's "read data" line, secrets redacted."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent.wire.wirelog import for_session
from tests.support.agents import AgentFactory, served
from tests.support.clients import StreamClient

SECRET = b"hunter2-very-secret"
SECRET_B64 = base64.b64encode(SECRET).decode()


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def debug_client(debug_log: pytest.LogCaptureFixture, agent_client: StreamClient) -> StreamClient:
    """A client of an agent whose session started with debug logging on (as with -v)."""
    return agent_client


def wire_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.wire.wirelog"]


async def test_each_request_and_reply_is_logged(
    debug_client: StreamClient, caplog: pytest.LogCaptureFixture
) -> None:
    request = b'{"execute": "guest-sync", "arguments": {"id": 7}}'
    await debug_client.send(request)
    assert await debug_client.reply() == {"return": 7}
    assert wire_lines(caplog) == [
        f'read data, count: {len(request)}, data: {{"execute": "guest-sync", '
        '"arguments": {"id": 7}}',
        'sent reply, count: 14, data: {"return": 7}',
    ]


async def test_error_replies_give_class_and_text(
    debug_client: StreamClient, caplog: pytest.LogCaptureFixture
) -> None:
    await debug_client.execute("guest-nope")
    await debug_client.send(b'{"execute": ]')
    await debug_client.reply()
    lines = wire_lines(caplog)
    assert "guest-nope failed: CommandNotFound: The command guest-nope has not been found" in (
        lines
    )
    assert any(line.startswith("request failed: GenericError: ") for line in lines)


async def test_secrets_and_content_never_reach_the_log(
    debug_client: StreamClient, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Arguments checked before any handler runs: nothing is changed on this machine.
    await debug_client.execute("guest-set-user-password", {"username": "x", "password": SECRET_B64})
    await debug_client.execute("guest-ssh-add-authorized-keys", {"keys": [SECRET.decode()]})
    await debug_client.execute("guest-ssh-remove-authorized-keys", {"keys": SECRET.decode()})
    await debug_client.execute("guest-file-write", "not-an-object")  # type: ignore[arg-type]
    path = tmp_path / "file"
    handle = (await debug_client.execute("guest-file-open", {"path": str(path), "mode": "w+"}))[
        "return"
    ]
    await debug_client.execute("guest-file-write", {"handle": handle, "buf-b64": SECRET_B64})
    await debug_client.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": 0})
    read = await debug_client.execute("guest-file-read", {"handle": handle})
    assert read["return"]["buf-b64"] == SECRET_B64
    started = await debug_client.execute(
        "guest-exec",
        {"path": "/bin/cat", "input-data": SECRET_B64, "capture-output": "separated"},
    )
    with trio.fail_after(60):
        while True:
            status = await debug_client.execute("guest-exec-status", started["return"])
            if status["return"]["exited"]:
                break
            await trio.sleep(0.05)
    assert status["return"]["out-data"] == SECRET_B64
    stream = "__io.github.trio-qga_exec-"  # the streaming exec: stdin in, output out
    pid = (await debug_client.execute(stream + "start", {"path": "/bin/cat"}))["return"]["pid"]
    await debug_client.execute(stream + "write", {"pid": pid, "data": SECRET_B64})
    await debug_client.execute(stream + "close-stdin", {"pid": pid})
    out, offset = b"", 0
    with trio.fail_after(60):
        while True:
            reply = await debug_client.execute(stream + "read", {"pid": pid, "out-offset": offset})
            out += base64.b64decode(reply["return"]["out-data"])
            offset = len(out)
            if reply["return"]["exited"]:
                break
    assert out == SECRET
    text = "\n".join(wire_lines(caplog))
    for secret in (SECRET_B64, SECRET.decode()):
        assert secret not in caplog.text  # not in any record, whoever logged it
    assert '"password": "<redacted>"' in text
    assert '"keys": "<redacted>"' in text
    assert '"arguments": "<redacted>"' in text
    assert '"buf-b64": "<redacted>"' in text
    assert '"input-data": "<redacted>"' in text
    assert '"out-data": "<redacted>"' in text
    assert '"data": "<redacted>"' in text


@pytest.fixture
def process_with_a_password() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line carries a secret, as `mysql -pSECRET` would."""
    argv = [sys.executable, "-c", "import time; time.sleep(60)", f"-p{SECRET.decode()}"]
    with subprocess.Popen(argv) as process:
        try:
            yield process
        finally:
            process.kill()


async def test_a_plugins_secret_never_reaches_the_log(
    debug_log: pytest.LogCaptureFixture,
    agent_factory: AgentFactory,
    process_with_a_password: subprocess.Popen[bytes],
) -> None:
    """The example plugin marks ``cmdline`` secret in its own schema."""
    async with served(agent_factory(plugins=True)) as client:
        reply = await client.execute("guest-x-process-list")
    [mine] = [p for p in reply["return"] if p["pid"] == process_with_a_password.pid]
    assert mine["cmdline"][-1] == f"-p{SECRET.decode()}"  # the reply has it
    assert SECRET.decode() not in debug_log.text
    assert '"cmdline": "<redacted>"' in "\n".join(wire_lines(debug_log))


def test_no_wire_log_without_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert for_session(lambda command: (frozenset(), frozenset())) is None
