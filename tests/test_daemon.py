"""``-d``: the agent as a daemon, and where its log goes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.clients import SocketClient
from tests.support.processes import run_agent

pytestmark = pytest.mark.slow


def launch(tmp_path: Path, *extra: str, sock: str = "qga.sock") -> subprocess.CompletedProcess[str]:
    """``trio-qga -d``: returns when the launcher exits."""
    return run_agent(tmp_path, "-d", "--transport", f"unix-listen:{tmp_path / sock}", *extra)


def wait_gone(pid: int) -> None:
    """Wait for the daemon to exit; never leave it behind."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"daemon {pid} did not stop within 10 s of SIGTERM")
        time.sleep(0.02)


@contextmanager
def daemon(tmp_path: Path, *extra: str) -> Iterator[int]:
    """A daemonized agent; yields its pid, stops it with SIGTERM."""
    result = launch(tmp_path, *extra)
    assert result.returncode == 0, result.stderr
    pid = int((tmp_path / "agent.pid").read_text())
    try:
        yield pid
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid)


def open_descriptors(pid: int) -> dict[int, str]:
    """What each descriptor of ``pid`` points to; one closed while we look is skipped
    (the agent is still closing the connection the test just dropped)."""
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
    return fds


def test_daemon_is_detached_and_serving_when_the_launcher_returns(tmp_path: Path) -> None:
    inherited = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(inherited, True)
    try:
        with daemon(tmp_path, "-l", str(tmp_path / "log")) as pid:
            # No waiting for the socket: the launcher exits once the agent serves.
            probe = socket.socket(socket.AF_UNIX)
            probe.connect(str(tmp_path / "qga.sock"))  # no retry: it must listen already
            probe.close()
            # The first reply may take a while on a loaded machine (models are built then).
            client = SocketClient(tmp_path / "qga.sock", timeout=20)
            assert client.execute("guest-ping") == {"return": {}}
            client.close()
            assert pid != os.getpid()
            assert os.getsid(pid) not in (pid, os.getsid(0))  # own session, not its leader
            assert os.readlink(f"/proc/{pid}/cwd") == "/"
            fds = open_descriptors(pid)
            assert fds[0] == fds[1] == fds[2] == "/dev/null"
            assert inherited not in fds or fds[inherited] != "/dev/null"
            status = Path(f"/proc/{pid}/status").read_text()
            assert "\nUmask:\t0077\n" in status
    finally:
        os.close(inherited)


def test_sigterm_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with daemon(tmp_path, "-l", str(log)) as pid:
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)
    assert not (tmp_path / "qga.sock").exists()
    assert not (tmp_path / "agent.pid").exists()
    assert "SIGTERM received, stopping" in log.read_text()


def test_second_daemon_on_the_same_pidfile_refuses_with_the_reason(tmp_path: Path) -> None:
    with daemon(tmp_path) as pid:
        result = launch(tmp_path, sock="other.sock")
        assert result.returncode == 1
        assert f"pid file {tmp_path / 'agent.pid'} is locked by another agent (pid {pid})" in (
            result.stderr
        )
        assert (tmp_path / "agent.pid").read_text().strip() == str(pid)


def test_daemon_that_cannot_open_its_channel_fails_in_the_launcher(tmp_path: Path) -> None:
    result = run_agent(tmp_path, "-d", "-m", "virtio-serial", "-p", str(tmp_path / "no-such-port"))
    assert result.returncode == 1
    assert f"virtio-serial {tmp_path / 'no-such-port'}: No such file or directory" in (
        result.stderr
    )
    assert not (tmp_path / "agent.pid").exists()


def test_relative_paths_are_kept_when_daemonized(tmp_path: Path) -> None:
    result = run_agent(
        None,
        *("-d", "--transport", "unix-listen:qga.sock", "-t", ".", "-f", "agent.pid", "-l", "log"),
        *("--cache-dir", "cache"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    pid = int((tmp_path / "agent.pid").read_text())
    client = SocketClient(tmp_path / "qga.sock")
    assert client.execute("guest-info")["return"]["version"]  # the plugins found: recorded
    client.close()
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert "ready" in (tmp_path / "log").read_text()
    assert not (tmp_path / "agent.pid").exists()
    assert (tmp_path / "cache" / "plugins.json").is_file()


def test_logfile_is_appended_to(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("earlier line\n")
    with daemon(tmp_path, "-l", str(log)):
        pass
    with daemon(tmp_path, "-l", str(log)):
        pass
    text = log.read_text()
    assert text.startswith("earlier line\n")
    assert text.count("ready") == 2


def test_daemon_logs_to_syslog_without_a_logfile(tmp_path: Path) -> None:
    """Through a stand-in for /dev/log: the same datagrams syslog(3) sends."""
    address = tmp_path / "dev-log"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    receiver.settimeout(10)
    code = (
        "import logging, sys\n"
        "import agent.daemon.logs as logs\n"
        "from agent.core.config import AgentConfig\n"
        "logs.SYSLOG_ADDRESS = sys.argv[1]\n"
        "logs.setup_logging(AgentConfig(verbose=True), daemonized=True)\n"
        "logging.getLogger('agent.core.session').debug('executing guest-ping')\n"
    )
    with receiver:
        proc = subprocess.run([sys.executable, "-c", code, str(address)], check=True)
        message = receiver.recv(4096)
    assert proc.returncode == 0
    # <31>: facility daemon, priority debug; the ident carries the pid, like syslog(3).
    assert message.startswith(b"<31>trio-qga[")
    assert message.endswith(b"]: DEBUG agent.core.session: executing guest-ping\x00")
