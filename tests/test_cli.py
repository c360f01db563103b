"""The real CLI as a process, over a real unix socket."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent import AgentConfig
from agent.daemon import conffile
from agent.daemon.cli import main
from agent.daemon.options import build_parser, config_from_args
from tests.support.clients import SocketClient
from tests.support.processes import (
    AGENT_COMMAND,
    run_agent,
    running_agent,
    spawn_agent,
    stop,
    wait_for_socket,
)

pytestmark = pytest.mark.slow


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-V"]) == 0
    assert "trio-qga 0.1.0" in capsys.readouterr().out


def test_socket_is_private_by_default(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (_, sock):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        client = SocketClient(sock)
        assert client.execute("guest-ping") == {"return": {}}
        client.close()


def test_socket_mode_option(tmp_path: Path) -> None:
    with running_agent(tmp_path, "--socket-mode", "0660") as (_, sock):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_socket_and_pidfile(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with running_agent(tmp_path) as (proc, sock):
        pidfile = tmp_path / "agent.pid"
        assert pidfile.read_text().strip() == str(proc.pid)
        proc.send_signal(signum)
        assert proc.wait(10) == 0
        assert not sock.exists()
        assert not pidfile.exists()


def test_signal_while_a_client_is_connected(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (proc, sock):
        client = SocketClient(sock)
        client.send(b'{"execute":"guest-sy')  # half a request
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not sock.exists()
        client.close()


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "qga.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()  # leaves the file, with nobody listening
    with running_agent(tmp_path) as (_, sock):
        client = SocketClient(sock)
        assert client.execute("guest-ping") == {"return": {}}
        client.close()


SECONDS = "expected seconds, a number > 0"
COMMAND = "expected a command with its arguments, as a shell splits them"


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--fs-timeout", "abc", SECONDS),
        ("--thaw-timeout", "0", SECONDS),
        ("--exec-idle-timeout", "nan", SECONDS),
        ("--command-timeout", "-5", SECONDS),
        ("--command-timeout", "inf", SECONDS),
        ("--max-handles", "0", "expected a whole number > 0"),
        ("--baud-rate", "fast", "expected a whole number > 0"),
        ("--socket-mode", "rw-rw----", "expected permissions in octal, such as 0660"),
        ("--socket-mode", "17777", "expected permissions in octal, such as 0660"),
        ("--poweroff-command", "", COMMAND),
        ("--hwclock-command", "'/sbin/hwclock", COMMAND),
    ],
)
def test_option_errors_name_the_option_and_what_it_expects(
    option: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([option, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == f"trio-qga: error: argument {option}: {expected}, got {value!r}"


def test_option_values_that_are_taken() -> None:
    options = ["--socket-mode", "660", "--max-handles", "3", "--fs-timeout", "0.5"]
    args = build_parser().parse_args([*options, "--poweroff-command", "busybox poweroff -f"])
    assert (args.socket_mode, args.max_handles, args.fs_timeout) == (0o660, 3, 0.5)
    assert args.poweroff_command == ("busybox", "poweroff", "-f")


def test_an_option_error_as_the_user_sees_it() -> None:
    done = subprocess.run(
        [*AGENT_COMMAND, "--fs-timeout", "abc"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "--fs-timeout: expected seconds, a number > 0, got 'abc'" in done.stderr


def test_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    result = run_agent(tmp_path, "--transport", f"unix-listen:{target}")
    assert result.returncode == 1
    assert "exists and is not a socket" in result.stderr
    assert target.read_text() == "keep me"


def test_refuses_a_socket_another_process_listens_on(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        result = run_agent(tmp_path, "-m", "unix-listen", "-p", str(path))
        assert result.returncode == 1
        assert "another process is listening" in result.stderr
        assert path.exists()
    finally:
        live.close()


def test_second_agent_on_the_same_pidfile_refuses(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (proc, _):
        result = run_agent(tmp_path, "--transport", f"unix-listen:{tmp_path / 'other.sock'}")
        assert result.returncode == 1
        assert f"locked by another agent (pid {proc.pid})" in result.stderr
        assert (tmp_path / "agent.pid").read_text().strip() == str(proc.pid)


def test_unknown_transport_is_a_clear_error(tmp_path: Path) -> None:
    result = run_agent(tmp_path, "-m", "carrier-pigeon", "-p", "/dev/null")
    assert result.returncode == 1
    assert "transport method 'carrier-pigeon' is not available" in result.stderr


def test_logfile_and_verbose(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    with running_agent(tmp_path, "-l", str(log), "-v") as (_, sock):
        client = SocketClient(sock)
        assert client.execute("guest-ping") == {"return": {}}
        client.close()
    text = log.read_text()
    assert "ready" in text
    assert "executing guest-ping" in text


def test_one_client_at_a_time_the_next_waits(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (_, sock):
        first = SocketClient(sock)
        assert first.execute("guest-ping") == {"return": {}}
        second = SocketClient(sock)
        second.send(b'{"execute":"guest-ping","id":2}\n')
        with pytest.raises(TimeoutError):
            second.line(timeout=0.3)
        first.close()
        second.sock.settimeout(10)
        assert second.reply() == {"return": {}, "id": 2}
        second.close()


def test_protocol_over_the_real_socket(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (_, sock):
        client = SocketClient(sock)
        client.send(b'{bad json\n{"execute":"guest-ping"}\n')
        assert client.reply()["error"]["desc"] == "JSON parse error, invalid keyword 'bad'"
        assert client.reply() == {"return": {}}
        client.resync(99)
        assert client.execute("guest-sync", {"id": 5}) == {"return": 5}
        client.close()


def test_python_dash_m_and_the_console_script() -> None:
    script = Path(sys.executable).parent / "trio-qga"  # installed by pip into the venv
    for command in (AGENT_COMMAND, [str(script)]):
        result = subprocess.run([*command, "-V"], capture_output=True, text=True, check=True)
        assert result.stdout.startswith("trio-qga 0.1.0")


@pytest.mark.parametrize(
    ("flags", "conf", "expected"),
    [
        ([], "", None),  # qemu-ga: no pid file in the foreground
        (["-f", "/run/flag.pid"], "", "/run/flag.pid"),
        ([], "pidfile=/run/conf.pid\n", "/run/conf.pid"),
        (["-d"], "", "/var/run/qemu-ga.pid"),
        (["-d", "-f", "/run/flag.pid"], "pidfile=/run/conf.pid\n", "/run/flag.pid"),
        (["-d"], "pidfile=/run/conf.pid\n", "/run/conf.pid"),
        (["-d", "-f", ""], "", None),
    ],
)
def test_pid_file_only_when_named_or_daemonized(
    tmp_path: Path, flags: list[str], conf: str, expected: str | None
) -> None:
    path = tmp_path / "qga.conf"
    path.write_text("[general]\n" + conf)
    args = build_parser().parse_args(flags)
    config = config_from_args(args, AgentConfig(**conffile.load(str(path), required=True)))
    assert config.pidfile_path == expected


def test_pid_file_named_by_the_configuration_file_is_held_in_the_foreground(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "conf.pid"
    conf = tmp_path / "qga.conf"
    conf.write_text(f"[general]\npidfile={pidfile}\n")
    sock = tmp_path / "qga.sock"
    argv = ["-c", str(conf), "--transport", f"unix-listen:{sock}", "-t", str(tmp_path)]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    proc = spawn_agent(None, *argv)  # no -f: the file names it
    try:
        wait_for_socket(sock, proc)
        assert pidfile.read_text().strip() == str(proc.pid)
    finally:
        assert stop(proc) == 0
    assert not pidfile.exists()
