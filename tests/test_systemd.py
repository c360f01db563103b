"""Under systemd: readiness (``Type=notify``), socket activation, the unit file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.clients import SocketClient
from tests.support.processes import ROOT, run_agent, spawn_agent

pytestmark = pytest.mark.slow

DATA = ROOT / "agent" / "data"
UNIT = DATA / "trio-qga.service"


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_once_serving_and_stopping_on_sigterm(tmp_path: Path, abstract: bool) -> None:
    """A stand-in for systemd's notification socket, as a path or in the abstract namespace."""
    name = f"@trio-qga-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind("\0" + name[1:] if abstract else name)
    manager.settimeout(30)
    sock = tmp_path / "qga.sock"
    with manager:
        agent = spawn_agent(
            tmp_path,
            *("--transport", f"unix-listen:{sock}"),
            env={"NOTIFY_SOCKET": name},
            stderr=subprocess.DEVNULL,
        )
        try:
            assert manager.recv(4096) == b"READY=1"
            client = SocketClient(sock, timeout=0.5)  # serving already: no retry needed
            assert client.execute("guest-ping") == {"return": {}}
            client.close()
            agent.send_signal(signal.SIGTERM)
            assert manager.recv(4096) == b"STOPPING=1"
            assert agent.wait(10) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()


def activated(
    tmp_path: Path, listener: socket.socket, *extra: str, fds: str = "1"
) -> subprocess.Popen[bytes]:
    """The agent started as systemd starts it: the socket as fd 3, LISTEN_PID its pid."""
    return spawn_agent(
        tmp_path,
        *extra,
        wrapper=["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS={fds} exec "$@"', "sh"],
        pass_fds=[3],
        preexec_fn=lambda: os.dup2(listener.fileno(), 3),
    )


def test_socket_activation_serves_the_socket_systemd_passed(tmp_path: Path) -> None:
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    with listener:
        # -m/-p are overridden by the passed socket, as in qemu-ga.
        agent = activated(tmp_path, listener, "-m", "virtio-serial", "-p", "/nonexistent")
        ping_then_stop(agent, path)
    assert path.exists()  # the socket belongs to systemd: the agent leaves it alone


def ping_then_stop(agent: subprocess.Popen[bytes], path: Path) -> None:
    """A session with the activated agent, then SIGTERM: it must exit cleanly."""
    try:
        client = SocketClient(path)
        client.resync(1)
        assert client.execute("guest-ping") == {"return": {}}
        client.close()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stderr:
            agent.stderr.close()


def test_socket_activation_by_systemd_s_own_tool(tmp_path: Path) -> None:
    """systemd-socket-activate sets the variables as the service manager does."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip(
            "systemd-socket-activate is not installed; the protocol itself is tested "
            "by test_socket_activation_serves_the_socket_systemd_passed"
        )
    path = tmp_path / "activated.sock"
    agent = spawn_agent(tmp_path, wrapper=[tool, "-l", str(path)])
    ping_then_stop(agent, path)  # the tool starts the agent on the first connection


def test_socket_activation_with_more_than_one_socket_is_refused(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "a.sock"))
    listener.listen()
    with listener:
        agent = activated(tmp_path, listener, fds="2")
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 1
    assert b"trio-qga listens on one socket; systemd passed 2" in err


def test_listen_fds_for_another_process_are_ignored(tmp_path: Path) -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    result = run_agent(tmp_path, "-m", "unix-listen", "-D", env=env)
    assert result.returncode == 1
    assert "method unix-listen needs a path" in result.stderr


@pytest.mark.parametrize(
    "name", ["trio-qga.service", "trio-qga-vsock.socket", "trio-qga-vsock.service"]
)
def test_unit_files_are_valid_for_systemd(tmp_path: Path, name: str) -> None:
    for service in DATA.glob("*.service"):
        text = service.read_text()
        assert "\nType=notify\n" in text
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert " -d" not in exec_start  # systemd supervises the process it starts
        # verify checks that ExecStart exists: point it at this checkout's script.
        script = Path(sys.executable).parent / "trio-qga"
        (tmp_path / service.name).write_text(text.replace(exec_start, f"ExecStart={script}"))
    (tmp_path / "trio-qga-vsock.socket").write_text((DATA / "trio-qga-vsock.socket").read_text())
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed: cannot verify the unit files"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Documentation=man:trio-qga(8) is installed with the units, not on this machine.
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
