"""fsfreeze through the real CLI, as a process, on the scratch filesystems:
SIGTERM and SIGKILL while frozen, the auto-thaw timeout, the log held while
its file is on a frozen filesystem, ``-F``, and the watchdog program itself."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.daemon.options import build_parser
from agent.system.fsfreeze.hook import DEFAULT_HOOK
from agent.system.fsfreeze.ioctl import LinuxIoctls
from agent.system.fsfreeze.marker import MARKER_NAME
from agent.system.fsfreeze.watchdog import ARMED, RELEASED, parse_options
from agent.system.fsfreeze.watchdog_client import WATCHDOG_PROGRAM
from tests.support.clients import SocketClient
from tests.support.processes import eventually, running_agent
from tests.support.scratch import BlockedWrite, Scratch, processes_mentioning

pytestmark = pytest.mark.slow


def write_to(directory: Path) -> BlockedWrite:
    return BlockedWrite(directory / f"cli-write-{time.time_ns()}", b"written while frozen")


def agent_options(tmp_path: Path, scratch: Scratch, *extra: str) -> tuple[str, ...]:
    return ("--mount-table", str(scratch.mount_table), "-l", str(tmp_path / "agent.log"), *extra)


def test_fsfreeze_options_are_spelled_as_qemu_gas() -> None:
    parse = build_parser().parse_args
    assert parse([]).fsfreeze_hook is None
    assert parse(["-F"]).fsfreeze_hook == DEFAULT_HOOK  # -F alone: the default hook
    assert parse(["-F/x/hook"]).fsfreeze_hook == "/x/hook"
    assert parse(["--fsfreeze-hook=/y"]).fsfreeze_hook == "/y"
    assert parse(["--thaw-timeout", "2.5"]).thaw_timeout == 2.5
    with pytest.raises(SystemExit):
        parse(["--thaw-timeout", "0"])


def test_sigterm_while_frozen_thaws_then_exits(tmp_path: Path, scratch: Scratch) -> None:
    with running_agent(tmp_path, *agent_options(tmp_path, scratch)) as (proc, sock):
        client = SocketClient(sock)
        assert client.execute("guest-fsfreeze-freeze") == {"return": 2}
        blocked = write_to(scratch.ext4)
        assert blocked.blocked_for(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        client.close()
    assert blocked.finished_within(5)
    assert not (tmp_path / MARKER_NAME).exists()
    log = (tmp_path / "agent.log").read_text()
    assert "stopping while frozen: thawing first" in log
    assert "stopping: thawed 2 filesystem(s)" in log


def test_sigkill_while_frozen_the_watchdog_thaws(tmp_path: Path, scratch: Scratch) -> None:
    marker = tmp_path / MARKER_NAME
    with running_agent(tmp_path, *agent_options(tmp_path, scratch)) as (proc, sock):
        client = SocketClient(sock)
        assert client.execute("guest-fsfreeze-freeze") == {"return": 2}
        [watchdog] = processes_mentioning(str(marker))
        blocked = [write_to(scratch.ext4), write_to(scratch.xfs)]
        assert all(write.blocked_for(0.3) for write in blocked)
        proc.kill()
        proc.wait(10)
        client.close()
        assert all(write.finished_within(10) for write in blocked)
        assert eventually(lambda: not marker.exists())
        assert eventually(lambda: not processes_mentioning(str(marker)))
        assert proc.stderr is not None
        said = proc.stderr.read().decode()  # the watchdog's stderr is the agent's
    assert f"thawed 2: {scratch.ext4}, {scratch.xfs}" in said, said
    assert watchdog != proc.pid


def test_one_watchdog_serves_every_freeze_and_stops_with_the_agent(
    tmp_path: Path, scratch: Scratch
) -> None:
    """Started at the first freeze, not before; kept (a thaw does not wait for a
    process to exit, a freeze for one to start); gone once the agent stops."""
    marker = str(tmp_path / MARKER_NAME)
    xfs = {"mountpoints": [str(scratch.xfs)]}
    with running_agent(tmp_path, *agent_options(tmp_path, scratch)) as (proc, sock):
        client = SocketClient(sock)
        assert not processes_mentioning(marker)
        assert client.execute("guest-fsfreeze-freeze-list", xfs) == {"return": 1}
        [watchdog] = processes_mentioning(marker)
        assert client.execute("guest-fsfreeze-thaw") == {"return": 1}
        assert processes_mentioning(marker) == [watchdog]
        assert client.execute("guest-fsfreeze-freeze") == {"return": 2}
        assert processes_mentioning(marker) == [watchdog]
        assert client.execute("guest-fsfreeze-thaw") == {"return": 2}
        assert processes_mentioning(marker) == [watchdog]
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert eventually(lambda: not processes_mentioning(marker))


def test_auto_thaw_and_a_log_file_on_the_frozen_filesystem(
    tmp_path: Path, scratch: Scratch
) -> None:
    """With -v every command is logged: were the log not held while frozen, the
    agent would block on its own log file and stop answering."""
    log = scratch.ext4 / f"agent-{time.time_ns()}.log"
    options = ("--mount-table", str(scratch.mount_table), "-l", str(log), "-v")
    with running_agent(tmp_path, *options, "--thaw-timeout", "1.5") as (_, sock):
        client = SocketClient(sock, timeout=5)
        assert client.execute("guest-fsfreeze-freeze") == {"return": 2}
        size = log.stat().st_size
        for n in range(3):
            assert client.execute("guest-sync", {"id": n}) == {"return": n}
        assert client.execute("guest-fsfreeze-status") == {"return": "frozen"}
        assert log.stat().st_size == size  # nothing written while frozen
        assert eventually(lambda: client.execute("guest-fsfreeze-status") == {"return": "thawed"})
        client.close()
    text = log.read_text()
    held = text[size:]
    assert held.count("executing guest-sync") == 3
    assert "auto-thaw: filesystems frozen for 1.5 s (--thaw-timeout): thawing" in held
    assert "auto-thaw: thawed 2 filesystem(s)" in held


def test_fsfreeze_hook_option_as_qemu_ga_spells_it(tmp_path: Path, scratch: Scratch) -> None:
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/hook.log\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    with running_agent(tmp_path, *agent_options(tmp_path, scratch, f"-F{hook}")) as (_, sock):
        client = SocketClient(sock)
        reply = client.execute("guest-fsfreeze-freeze-list", {"mountpoints": [str(scratch.xfs)]})
        assert reply == {"return": 1}
        assert client.execute("guest-fsfreeze-thaw") == {"return": 1}
        client.close()
    assert (tmp_path / "hook.log").read_text().split() == ["freeze", "thaw"]


# ----------------------------------------------------------------- watchdog --


def start_watchdog(tmp_path: Path, mountpoints: list[str]) -> subprocess.Popen[bytes]:
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/hook.log\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    (tmp_path / MARKER_NAME).write_text(json.dumps(mountpoints))
    watchdog = subprocess.Popen(
        [
            *(sys.executable, "-I", "-S", WATCHDOG_PROGRAM),
            *("--marker", str(tmp_path / MARKER_NAME), "--hook", str(hook)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert watchdog.stdin is not None
    assert watchdog.stdout is not None
    watchdog.stdin.write(json.dumps(mountpoints).encode() + b"\n")
    watchdog.stdin.flush()
    assert watchdog.stdout.readline() == ARMED
    return watchdog


def test_watchdog_thaws_at_end_of_file_and_ignores_signals(
    tmp_path: Path, scratch: Scratch
) -> None:
    assert LinuxIoctls().freeze(str(scratch.xfs), None)
    watchdog = start_watchdog(tmp_path, [str(scratch.xfs)])
    blocked = write_to(scratch.xfs)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        watchdog.send_signal(signum)
    assert blocked.blocked_for(0.3)
    assert watchdog.poll() is None
    assert watchdog.stdin is not None
    assert watchdog.stderr is not None
    watchdog.stdin.close()  # as the kernel does when the agent dies
    assert watchdog.wait(10) == 0
    assert blocked.finished_within(10)
    assert not (tmp_path / MARKER_NAME).exists()
    assert (tmp_path / "hook.log").read_text().split() == ["thaw"]
    assert b"thawed 1" in watchdog.stderr.read()
    watchdog.stderr.close()
    assert watchdog.stdout is not None
    watchdog.stdout.close()


def test_a_released_watchdog_leaves_everything_alone(tmp_path: Path, scratch: Scratch) -> None:
    assert LinuxIoctls().freeze(str(scratch.xfs), None)
    watchdog = start_watchdog(tmp_path, [str(scratch.xfs)])
    assert watchdog.stdin is not None
    watchdog.stdin.write(RELEASED)
    watchdog.stdin.close()
    assert watchdog.wait(10) == 0
    assert (tmp_path / MARKER_NAME).exists()
    assert write_to(scratch.xfs).blocked_for(0.3)  # still frozen: the scratch fixture thaws
    assert not (tmp_path / "hook.log").exists()
    for stream in (watchdog.stdout, watchdog.stderr):
        assert stream is not None
        stream.close()


def test_a_released_watchdog_guards_the_next_freeze(tmp_path: Path, scratch: Scratch) -> None:
    ioctls = LinuxIoctls()
    assert ioctls.freeze(str(scratch.xfs), None)
    watchdog = start_watchdog(tmp_path, [str(scratch.xfs)])
    assert watchdog.stdin is not None
    assert watchdog.stdout is not None
    assert watchdog.stderr is not None
    watchdog.stdin.write(RELEASED)
    watchdog.stdin.flush()
    assert ioctls.thaw(str(scratch.xfs))  # the agent's own thaw, before it released
    assert ioctls.freeze(str(scratch.ext4), None)
    watchdog.stdin.write(json.dumps([str(scratch.ext4)]).encode() + b"\n")
    watchdog.stdin.flush()
    assert watchdog.stdout.readline() == ARMED
    watchdog.stdin.close()  # the agent dies with ext4 frozen
    assert watchdog.wait(10) == 0
    assert write_to(scratch.ext4).finished_within(10)
    assert f"thawed 1: {scratch.ext4}".encode() in watchdog.stderr.read()
    for stream in (watchdog.stdout, watchdog.stderr):
        stream.close()


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        ([], {}),
        (["--marker", "/m", "--hook", "/h"], {"marker": "/m", "hook": "/h"}),
        (["--hook=/h x", "--marker=/m"], {"hook": "/h x", "marker": "/m"}),
    ],
)
def test_watchdog_options(argv: list[str], options: dict[str, str]) -> None:
    assert parse_options(argv) == options


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--marker"], "--marker needs a value"),
        (["--bogus", "x"], "unrecognized argument: --bogus"),
        (["/m"], "unrecognized argument: /m"),
    ],
)
def test_watchdog_refuses_bad_options(argv: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_options(argv)
    done = subprocess.run(
        [sys.executable, "-I", "-S", WATCHDOG_PROGRAM, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert error in done.stderr


def test_watchdog_starts_with_what_arming_needs_only() -> None:
    """The first freeze waits for the watchdog's start: no argparse, pathlib,
    subprocess or typing (the hook's subprocess is imported when it runs)."""
    probe = (
        "import importlib.util, sys;"
        f" spec = importlib.util.spec_from_file_location('watchdog', {WATCHDOG_PROGRAM!r});"
        " module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module);"
        " module._load_thaw();"
        " print(' '.join(name for name in ('argparse', 'pathlib', 'subprocess', 'typing')"
        " if name in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.split() == []
