"""guest-exec and guest-exec-status with real (harmless) children: sh, cat, sleep."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from agent.system import processes as processes_module
from tests.support.agents import AgentFactory, session
from tests.support.clients import StreamClient
from tests.support.exec_programs import DAEMON, kill_daemon

pytestmark = pytest.mark.slow


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def exec_ok(client: StreamClient, path: str, *args: str, **extra: Any) -> int:
    arguments = {"path": path, "arg": list(args), **extra}
    reply = await client.execute("guest-exec", arguments)
    assert "return" in reply, reply
    pid: int = reply["return"]["pid"]
    return pid


async def wait_status(client: StreamClient, pid: int) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            reply = await client.execute("guest-exec-status", {"pid": pid})
            status: dict[str, Any] = reply["return"]
            if status["exited"]:
                return status
            await trio.sleep(0.01)


async def run(client: StreamClient, path: str, *args: str, **extra: Any) -> dict[str, Any]:
    return await wait_status(client, await exec_ok(client, path, *args, **extra))


SCRIPT = "echo out; echo err >&2; exit 3"


async def test_separated_output_and_exit_code(agent_client: StreamClient) -> None:
    status = await run(agent_client, "/bin/sh", "-c", SCRIPT, **{"capture-output": True})
    assert status == {
        "exited": True,
        "exitcode": 3,
        "out-data": b64(b"out\n"),
        "out-truncated": False,
        "err-data": b64(b"err\n"),
        "err-truncated": False,
    }


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("separated", {"out-data": b64(b"out\n"), "err-data": b64(b"err\n")}),
        ("stdout", {"out-data": b64(b"out\n")}),
        ("stderr", {"err-data": b64(b"err\n")}),
        ("merged", {"out-data": b64(b"out\nerr\n")}),
        ("none", {}),
        (False, {}),
    ],
)
async def test_capture_modes(
    agent_client: StreamClient, mode: str | bool, expected: dict[str, str]
) -> None:
    status = await run(agent_client, "/bin/sh", "-c", SCRIPT, **{"capture-output": mode})
    data = {key: value for key, value in status.items() if key.endswith("-data")}
    assert data == expected
    assert status["exitcode"] == 3


async def test_no_capture_by_default(agent_client: StreamClient) -> None:
    assert await run(agent_client, "/bin/sh", "-c", SCRIPT) == {"exited": True, "exitcode": 3}


async def test_killed_by_a_signal(agent_client: StreamClient) -> None:
    status = await run(agent_client, "/bin/sh", "-c", "kill -9 $$")
    assert status == {"exited": True, "signal": 9}


async def test_input_data_goes_to_stdin(agent_client: StreamClient) -> None:
    data = os.urandom(300_000)  # more than a pipe holds
    status = await run(
        agent_client, "/bin/cat", **{"input-data": b64(data), "capture-output": True}
    )
    assert base64.b64decode(status["out-data"]) == data


async def test_input_a_child_does_not_read_does_not_keep_it_running(
    agent_client: StreamClient,
) -> None:
    status = await run(agent_client, "/bin/true", **{"input-data": b64(b"x" * 1_000_000)})
    assert status == {"exited": True, "exitcode": 0}


async def test_stdin_is_dev_null_without_input(agent_client: StreamClient) -> None:
    status = await run(
        agent_client, "/bin/sh", "-c", "readlink /proc/self/fd/0", **{"capture-output": True}
    )
    assert base64.b64decode(status["out-data"]) == b"/dev/null\n"


async def test_env_replaces_the_environment(agent_client: StreamClient) -> None:
    status = await run(
        agent_client,
        "env",
        env=["A=b=c", "PATH=/usr/bin:/bin"],
        **{"capture-output": True},
    )
    lines = set(base64.b64decode(status["out-data"]).decode().splitlines())
    assert lines == {"A=b=c", "PATH=/usr/bin:/bin"}


@pytest.mark.qemu_ga
@pytest.mark.parametrize("env", [["A=b=c", "PATH=/usr/bin:/bin", "EMPTY="], []])
async def test_env_replaces_the_environment_as_qemu_gas_does(
    agent_client: StreamClient, qemu_ga_socket: Path, env: list[str]
) -> None:
    """qemu-ga hands ``env`` to glib's spawn as the child's envp: the whole
    environment, the agent's own not inherited (docs/exec.md)."""

    async def child_environment(client: StreamClient) -> set[str]:
        status = await run(client, "/usr/bin/env", env=env, **{"capture-output": True})
        return set(base64.b64decode(status.get("out-data", "")).decode().splitlines())

    async with await trio.open_unix_socket(str(qemu_ga_socket)) as stream:
        theirs = await child_environment(StreamClient(stream))
    assert await child_environment(agent_client) == theirs == set(env)


async def test_output_is_capped_and_the_rest_drained(
    agent_client: StreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes_module, "OUTPUT_LIMIT", 1000)
    status = await run(
        agent_client,
        "/bin/sh",
        "-c",
        "head -c 300000 /dev/zero; head -c 10 /dev/zero >&2",
        **{"capture-output": True},
    )
    assert base64.b64decode(status["out-data"]) == bytes(1000)
    assert status["out-truncated"] is True
    assert base64.b64decode(status["err-data"]) == bytes(10)
    assert status["err-truncated"] is False


async def test_status_is_reported_once(agent_client: StreamClient) -> None:
    pid = await exec_ok(agent_client, "/bin/true")
    await wait_status(agent_client, pid)
    reply = await agent_client.execute("guest-exec-status", {"pid": pid})
    assert reply == {"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}


async def test_unknown_pid(agent_client: StreamClient) -> None:
    reply = await agent_client.execute("guest-exec-status", {"pid": os.getpid()})
    assert reply == {"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}


def process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


async def exited_unreaped(pid: int) -> None:
    """Wait until ``pid`` has exited, not reaped (nothing tells when: poll /proc)."""
    with trio.fail_after(10):
        while True:
            if process_state(pid) == "Z":
                return
            await trio.sleep(0.01)


async def test_an_exited_child_is_reaped_only_once_reported(agent_client: StreamClient) -> None:
    pid = await exec_ok(agent_client, "/bin/true")
    await exited_unreaped(pid)
    await trio.sleep(0.05)
    assert process_state(pid) == "Z"  # still ours: the pid cannot be reused yet
    await wait_status(agent_client, pid)
    assert process_state(pid) is None


async def test_exited_waits_for_captured_output_to_close(
    agent_client: StreamClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The shell exits at once; a grandchild keeps stdout open until the test
    # lets it go (qemu-ga waits too), here well within the grace period.
    monkeypatch.setattr(processes_module, "DRAIN_GRACE", 10.0)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    pid = await exec_ok(
        agent_client,
        "/bin/sh",
        "-c",
        f"(read line < {gate}; echo late) &",
        **{"capture-output": True},
    )
    await exited_unreaped(pid)  # the shell (not reported yet); its grandchild holds stdout
    assert (await agent_client.execute("guest-exec-status", {"pid": pid}))["return"] == {
        "exited": False
    }
    await trio.to_thread.run_sync(gate.write_text, "go\n")
    status = await wait_status(agent_client, pid)
    assert base64.b64decode(status["out-data"]) == b"late\n"


async def test_a_daemon_holding_stdout_does_not_hide_the_exit(
    agent_client: StreamClient, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    fds_before = len(os.listdir("/proc/self/fd"))
    try:
        started = trio.current_time()
        pid = await exec_ok(
            agent_client,
            "/bin/sh",
            "-c",
            DAEMON.format(pidfile=pidfile),
            **{"capture-output": True},
        )
        status = await wait_status(agent_client, pid)
        assert trio.current_time() - started < processes_module.DRAIN_GRACE + 8
        assert status["exitcode"] == 0
        assert base64.b64decode(status["out-data"]) == b"started\n"
        assert process_state(int(pidfile.read_text())) not in (None, "Z")  # still running
        assert len(os.listdir("/proc/self/fd")) == fds_before  # the pipes are closed
    finally:
        kill_daemon(pidfile)


@pytest.mark.qemu_ga
async def test_qemu_ga_never_reports_a_child_whose_daemon_holds_stdout(
    qemu_ga_socket: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    stream = await trio.open_unix_socket(str(qemu_ga_socket))
    client = StreamClient(stream)
    try:
        pid = await exec_ok(
            client, "/bin/sh", "-c", DAEMON.format(pidfile=pidfile), **{"capture-output": True}
        )
        await trio.sleep(processes_module.DRAIN_GRACE + 2)
        reply = await client.execute("guest-exec-status", {"pid": pid})
        assert reply == {"return": {"exited": False}}  # and so until the daemon ends
    finally:
        kill_daemon(pidfile)
        await stream.aclose()


async def test_a_running_child_does_not_block_the_agent(agent_client: StreamClient) -> None:
    pid = await exec_ok(agent_client, "/bin/sleep", "30")
    with trio.fail_after(2):
        assert await agent_client.execute("guest-ping") == {"return": {}}
        reply = await agent_client.execute("guest-exec-status", {"pid": pid})
    assert reply == {"return": {"exited": False}}
    assert process_state(pid) not in (None, "Z")


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/nonexistent/x", "No such file or directory"), ("/etc/passwd", "Permission denied")],
)
async def test_a_program_that_cannot_start(
    agent_client: StreamClient, path: str, reason: str
) -> None:
    reply = await agent_client.execute("guest-exec", {"path": path})
    assert reply == {
        "error": {
            "class": "GenericError",
            "desc": "Guest agent command failed, error was"
            f" 'Failed to execute child process \u201c{path}\u201d ({reason})'",
        }
    }


async def test_bad_input_data(agent_client: StreamClient) -> None:
    reply = await agent_client.execute("guest-exec", {"path": "/bin/true", "input-data": "!!"})
    assert reply["error"]["desc"] == "Base64 data contains invalid characters"


async def test_a_bad_capture_mode_is_refused(agent_client: StreamClient) -> None:
    reply = await agent_client.execute(
        "guest-exec", {"path": "/bin/true", "capture-output": "bogus"}
    )
    assert reply["error"]["class"] == "GenericError"


async def test_children_outlive_a_session_and_die_with_the_agent(
    agent_factory: AgentFactory,
) -> None:
    async with agent_factory() as agent:
        async with session(agent) as client:
            pid = await exec_ok(client, "/bin/sh", "-c", "sleep 30 & sleep 30")
        assert process_state(pid) not in (None, "Z")
        async with session(agent) as client:  # a host that reconnects finds it
            reply = await client.execute("guest-exec-status", {"pid": pid})
            assert reply == {"return": {"exited": False}}
    assert process_state(pid) is None
    # The grandchild too (SIGKILL lands a moment after kill() returns on a busy machine).
    with trio.fail_after(5):
        while True:
            if not [m for m in group_members(pid) if process_state(m) not in (None, "Z")]:
                break
            await trio.sleep(0.01)


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    members.append(int(entry))
            except ProcessLookupError:
                pass
    return members


async def test_a_script_without_a_shebang_runs_with_sh(
    agent_client: StreamClient, tmp_path: Path
) -> None:
    script = tmp_path / "script"
    script.write_text('echo "sh ran $0 $1"\n')
    script.chmod(0o755)
    status = await run(agent_client, str(script), "x", **{"capture-output": True})
    assert base64.b64decode(status["out-data"]) == f"sh ran {script} x\n".encode()
