"""Under systemd: readiness (``Type=notify``), socket activation, the unit file."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.daemon import service
from tests.support.clients import SocketClient
from tests.support.processes import ROOT, run_agent, spawn_agent

pytestmark = pytest.mark.slow

DATA = ROOT / "agent" / "data"
UNITS = sorted(path for path in DATA.iterdir() if path.suffix in {".service", ".socket"})


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
    tmp_path: Path,
    listener: socket.socket | list[socket.socket],
    *extra: str,
    fds: str | None = None,
    names: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """The agent started as systemd starts it: the sockets from fd 3 on, LISTEN_PID
    its pid, LISTEN_FDS their number (or ``fds``), LISTEN_FDNAMES ``names``."""
    listeners = listener if isinstance(listener, list) else [listener]
    passed = [3 + index for index in range(len(listeners))]
    variables = f"LISTEN_PID=$$ LISTEN_FDS={fds or len(listeners)}"
    if names is not None:
        variables += f" LISTEN_FDNAMES={names}"

    def pass_sockets() -> None:
        # Out of the way first: a socket may sit on a number another one goes to.
        # (The child closes what is not passed once this has run.)
        high = [200 + index for index in range(len(listeners))]
        for sock, number in zip(listeners, high, strict=True):
            os.dup2(sock.fileno(), number)
        for number, target in zip(high, passed, strict=True):
            os.dup2(number, target)

    return spawn_agent(
        tmp_path,
        *extra,
        env=env,
        wrapper=["sh", "-c", f'{variables} exec "$@"', "sh"],
        pass_fds=passed,
        preexec_fn=pass_sockets,
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


def listening(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    return listener


def test_socket_activation_serves_every_socket_and_the_transports_named(
    tmp_path: Path,
) -> None:
    """Two sockets from systemd, each a transport of its own, beside a --transport
    one; -m/-p give way to systemd's sockets, as in qemu-ga. READY=1 comes once
    all three serve."""
    first, second, own = tmp_path / "a.sock", tmp_path / "b.sock", tmp_path / "own.sock"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(30)
    with listening(first) as one, listening(second) as two, manager:
        agent = activated(
            tmp_path,
            [one, two],
            *("-m", "virtio-serial", "-p", "/nonexistent", "--transport", f"unix-listen:{own}"),
            names="trio-qga.socket:vsock-or-other",
            env={"NOTIFY_SOCKET": str(tmp_path / "notify")},
        )
        try:
            assert manager.recv(4096) == b"READY=1"
            clients = [SocketClient(path, timeout=0.5) for path in (first, second, own)]
            for client in clients:  # all connected at once, each served
                assert client.execute("guest-ping") == {"return": {}}
            for client in clients:
                client.close()
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(10) == 0
            if agent.stderr:
                agent.stderr.close()
    assert first.exists()  # systemd's sockets are left alone
    assert not own.exists()  # the agent's own is removed


def test_socket_activation_with_a_socket_missing_is_refused(tmp_path: Path) -> None:
    with listening(tmp_path / "a.sock") as listener:
        agent = activated(tmp_path, listener, fds="2", names="first:second")
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 1
    assert b"trio-qga: socket 'second' (fd 4) from systemd: Bad file descriptor" in err


def test_ready_once_the_transports_that_can_open_are_open(tmp_path: Path) -> None:
    """With -r, a channel that is absent is waited for after READY=1; the others serve."""
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(30)
    sock = tmp_path / "qga.sock"
    with manager:
        agent = spawn_agent(
            tmp_path,
            *("-r", "-m", "virtio-serial", "-p", str(tmp_path / "no-port-yet")),
            *("--transport", f"unix-listen:{sock}"),
            env={"NOTIFY_SOCKET": str(tmp_path / "notify")},
            stderr=subprocess.DEVNULL,
        )
        try:
            assert manager.recv(4096) == b"READY=1"
            client = SocketClient(sock, timeout=0.5)
            assert client.execute("guest-ping") == {"return": {}}
            client.close()
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(10) == 0


def test_listen_fds_for_another_process_are_ignored(tmp_path: Path) -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    result = run_agent(tmp_path, "-m", "unix-listen", "-D", env=env)
    assert result.returncode == 1
    assert "method unix-listen needs a path" in result.stderr


@pytest.mark.parametrize("unit_file", UNITS, ids=[path.name for path in UNITS])
def test_unit_file_is_valid_for_systemd(tmp_path: Path, unit_file: Path) -> None:
    text = unit_file.read_text()
    if unit_file.suffix == ".service":
        assert "\nType=notify\n" in text
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert exec_start.startswith(service.PACKAGED_EXEC)
        assert " -d" not in exec_start  # systemd supervises the process it starts
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed: cannot verify the unit files"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # verify loads the units a unit names (a socket's service) and checks that
    # ExecStart exists: all of them, run by this checkout's script.
    script = Path(sys.executable).parent / "trio-qga"
    for path in UNITS:
        packaged = path.read_text()
        (tmp_path / path.name).write_text(
            packaged.replace(service.PACKAGED_EXEC, f"ExecStart={script}")
        )
    # Documentation=man:trio-qga(8) is installed with the units, not on this machine.
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / unit_file.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_multi_transport_unit_names_three_transports() -> None:
    """agent/data/trio-qga-multi.service's command line, as trio-qga reads it."""
    text = (DATA / "trio-qga-multi.service").read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    result = run_agent(None, *shlex.split(exec_start)[1:], "-D")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "method=virtio-serial" in lines
    assert "path=/dev/virtio-ports/org.qemu.guest_agent.0" in lines
    assert "retry-path=true" in lines
    assert "transports=vsock-listen:-1:1234,unix-listen:/run/trio-qga.sock" in lines
