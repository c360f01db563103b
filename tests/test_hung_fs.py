"""A hung filesystem never hangs the agent: every request answered in bounded time.

The hung mounts are FUSE filesystems whose operations block until the test
releases them (``tests/support/hung_mounts.py``), one plain ``fuse`` and one
``fuseblk`` on a loop device. Agents run as processes inside their mount
namespace with ``--fs-timeout 1``. Each test proves the answer comes within
the deadline plus a margin (the machine is loaded: the margin is generous),
that guest-ping answers right after, and that after the release the mount is
served again. ``test_the_issue_table`` runs the issue's requests against
qemu-ga too, which hangs on each; it is given a short leash and killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pybase64
import pytest

from agent.system.fsfreeze.marker import MARKER_NAME
from tests.support.clients import Reply, SocketClient
from tests.support.hung_mounts import HungMounts
from tests.support.processes import eventually, spawn_agent, stop, wait_for_socket
from tests.support.reference import qemu_ga_binary
from tests.support.scratch import BlockedWrite, Scratch

pytestmark = pytest.mark.slow

FS_TIMEOUT = 1.0
MARGIN = 4.0  # seconds on top of the deadline, for a loaded machine
LEASH = 3.0  # seconds qemu-ga gets before it is taken as hung


@dataclass
class RunningAgent:
    proc: subprocess.Popen[bytes]
    sock: Path
    log: Path
    workdir: Path
    clients: list[SocketClient] = field(default_factory=list)

    def client(self) -> SocketClient:
        """A connection, closed when the agent stops."""
        self.clients.append(SocketClient(self.sock, timeout=FS_TIMEOUT + MARGIN))
        return self.clients[-1]


@contextmanager
def agent_in(mounts: HungMounts, workdir: Path, *extra: str) -> Iterator[RunningAgent]:
    """trio-qga in the hung mounts' namespace; released, then stopped with SIGTERM."""
    sock, log = workdir / "qga.sock", workdir / "agent.log"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = spawn_agent(
        workdir,
        *("--transport", f"unix-listen:{sock}", "-l", str(log)),
        *("--mount-table", str(mounts.mount_table), "--fs-timeout", f"{FS_TIMEOUT:g}"),
        *extra,
        wrapper=mounts.command(),
        env=mounts.environment(),
    )
    with running_in(mounts, proc, sock, log, kill=False) as agent:
        yield agent


@contextmanager
def qemu_ga_in(mounts: HungMounts, workdir: Path) -> Iterator[RunningAgent]:
    """qemu-ga in the namespace; killed, then released so that it can die."""
    sock, log = workdir / "qga.sock", workdir / "qemu-ga.log"
    command = [qemu_ga_binary(), "-m", "unix-listen", "-p", str(sock), "-t", str(workdir)]
    command += ["-f", str(workdir / "qemu-ga.pid"), "-l", str(log)]
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(mounts.command(*command), stderr=subprocess.PIPE)
    with running_in(mounts, proc, sock, log, kill=True) as agent:
        yield agent


@contextmanager
def running_in(
    mounts: HungMounts, proc: subprocess.Popen[bytes], sock: Path, log: Path, *, kill: bool
) -> Iterator[RunningAgent]:
    agent = RunningAgent(proc, sock, log, sock.parent)
    try:
        wait_for_socket(sock, proc)
        yield agent
    finally:
        for client in agent.clients:
            client.close()
        if kill:
            proc.kill()
        mounts.release()  # nothing of it may stay stuck
        stop(proc, 20)


def timed(
    client: SocketClient,
    name: str,
    arguments: dict[str, Any] | None = None,
    fs_timeout: float = FS_TIMEOUT,
) -> Reply:
    """The reply, asserted to come within the deadline plus the margin."""
    start = time.monotonic()
    reply = client.execute(name, arguments)
    elapsed = time.monotonic() - start
    assert elapsed < fs_timeout + MARGIN, f"{name} took {elapsed:.1f} s"
    return reply


def waits_on_fuse(pid: int) -> bool:
    """A thread of ``pid`` waits for the FUSE daemon's answer (past the watchdog's
    start, in the freeze itself: a kill before that is another story)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text() == "request_wait_answer":
                return True
        except OSError:
            continue
    return False


def ping(client: SocketClient) -> None:
    assert timed(client, "guest-ping") == {"return": {}}


def error_text(reply: Reply) -> str:
    assert "error" in reply, reply
    desc: str = reply["error"]["desc"]
    return desc


def fsinfo_of(client: SocketClient, mountpoint: Path) -> dict[str, Any]:
    reply = timed(client, "guest-get-fsinfo")
    [entry] = [fs for fs in reply["return"] if fs["mountpoint"] == str(mountpoint)]
    return dict(entry)


def open_fds(pid: int, target: Path) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == str(target)
        except OSError:
            continue
    return count


def test_fsinfo_and_disks_answer_with_the_hung_mount_listed(
    hung_mounts: HungMounts, tmp_path: Path
) -> None:
    with agent_in(hung_mounts, tmp_path) as agent:
        client = agent.client()
        before = fsinfo_of(client, hung_mounts.blk)
        assert before["type"] == "fuseblk"
        assert before["total-bytes"] == 8 << 20
        hung_mounts.hold()
        hung = fsinfo_of(client, hung_mounts.blk)
        assert "total-bytes" not in hung
        assert "used-bytes" not in hung
        assert hung["name"] == os.path.basename(hung_mounts.loop)
        assert "total-bytes" in fsinfo_of(client, hung_mounts.xfs)  # the others have theirs
        ping(client)
        start = time.monotonic()
        assert "total-bytes" not in fsinfo_of(client, hung_mounts.blk)
        assert time.monotonic() - start < FS_TIMEOUT  # known to hang: no second wait
        disks = timed(client, "guest-get-disks")["return"]
        assert hung_mounts.loop in [disk["name"] for disk in disks]
        assert f"{hung_mounts.blk} did not answer within 1 s" in agent.log.read_text()
        hung_mounts.release()
        assert eventually(lambda: "total-bytes" in fsinfo_of(client, hung_mounts.blk))


def test_file_open_answers_naming_the_path_and_leaks_nothing(
    hung_mounts: HungMounts, tmp_path: Path
) -> None:
    with agent_in(hung_mounts, tmp_path) as agent:
        client = agent.client()
        hung_mounts.hold()
        for mount in (hung_mounts.fuse, hung_mounts.blk):
            path = str(mount / "data")
            assert error_text(timed(client, "guest-file-open", {"path": path})) == (
                f"failed to open file '{path}' (mode: 'r'): "
                f"the filesystem at {mount} did not answer within 1 s"
            )
            ping(client)
            start = time.monotonic()
            assert "earlier" in error_text(client.execute("guest-file-open", {"path": path}))
            assert time.monotonic() - start < FS_TIMEOUT  # fails fast
        hung_mounts.release()
        data = hung_mounts.fuse / "data"
        assert eventually(
            lambda: "return" in client.execute("guest-file-open", {"path": str(data)})
        )
        # The opens that completed late were closed: only the last one is open.
        assert open_fds(agent.proc.pid, data) == 1


def test_a_handle_whose_io_hung_fails_at_once_until_it_comes_back(
    hung_mounts: HungMounts, tmp_path: Path
) -> None:
    data = hung_mounts.blk / "data"
    with agent_in(hung_mounts, tmp_path) as agent:
        client = agent.client()
        handle = client.execute("guest-file-open", {"path": str(data), "mode": "r+"})["return"]
        other = client.execute("guest-file-open", {"path": str(data), "mode": "r+"})["return"]
        hung_mounts.hold()
        # Past the page cache: FUSE reads of a file opened without caching ask the daemon.
        read = {"handle": handle, "count": 100}
        assert f"file '{data}' (handle {handle}): the filesystem at {hung_mounts.blk} did not" in (
            error_text(timed(client, "guest-file-read", read))
        )
        ping(client)
        buffer = pybase64.b64encode(b"abc").decode()
        for name, arguments in [
            ("guest-file-read", read),
            ("guest-file-write", {"handle": handle, "buf-b64": buffer}),
            ("guest-file-seek", {"handle": handle, "offset": 0, "whence": "end"}),
            ("guest-file-flush", {"handle": handle}),
        ]:
            start = time.monotonic()
            assert "close the handle" in error_text(client.execute(name, arguments))
            assert time.monotonic() - start < FS_TIMEOUT
        # The other handle on that mount fails fast too, with the mount's reason.
        assert "earlier" in error_text(timed(client, "guest-file-flush", {"handle": other}))
        hung_mounts.release()
        assert eventually(lambda: "return" in client.execute("guest-file-read", read))
        assert timed(client, "guest-file-seek", {"handle": handle, "offset": 0, "whence": "end"})[
            "return"
        ] == {"eof": False, "position": 4096}
        assert timed(client, "guest-file-close", {"handle": handle}) == {"return": {}}


def test_fstrim_reports_the_hung_mount_and_trims_the_others(
    hung_mounts: HungMounts, tmp_path: Path
) -> None:
    """The xfs trim itself takes seconds here (a loop device punching holes): the
    hung mount may add one deadline to what a trim takes without it."""
    with agent_in(hung_mounts, tmp_path) as agent:
        client = agent.client()
        client.sock.settimeout(120)
        start = time.monotonic()
        paths = {
            entry["path"]: entry for entry in client.execute("guest-fstrim")["return"]["paths"]
        }
        assert paths[str(hung_mounts.blk)]["error"] == "trim not supported"  # when it answers
        baseline = time.monotonic() - start
        hung_mounts.hold()
        start = time.monotonic()
        paths = {
            entry["path"]: entry for entry in client.execute("guest-fstrim")["return"]["paths"]
        }
        assert time.monotonic() - start < baseline + FS_TIMEOUT + MARGIN
        assert paths[str(hung_mounts.blk)] == {
            "path": str(hung_mounts.blk),
            "error": f"failed to trim: the filesystem at {hung_mounts.blk}"
            " did not answer within 1 s",
        }
        assert "trimmed" in paths[str(hung_mounts.xfs)]
        ping(client)


def test_a_freeze_hung_on_one_mount_thaws_what_it_froze(
    hung_mounts: HungMounts, scratch: Scratch, tmp_path: Path
) -> None:
    """A real FIFREEZE flushes the filesystem: under load that can take over a
    second, so this agent has a deadline of 5 s."""
    with agent_in(hung_mounts, tmp_path, "--fs-timeout", "5") as agent:
        client = agent.client()
        client.sock.settimeout(5 + MARGIN)
        hung_mounts.hold()
        mountpoints = [str(hung_mounts.xfs), str(hung_mounts.blk)]
        request = {"mountpoints": mountpoints}
        reply = timed(client, "guest-fsfreeze-freeze-list", request, fs_timeout=5)
        assert error_text(reply) == (
            f"failed to freeze {hung_mounts.blk}: "
            f"the filesystem at {hung_mounts.blk} did not answer within 5 s"
        )
        assert "thawed 1 filesystem(s)" in agent.log.read_text()  # the xfs it had frozen
        assert timed(client, "guest-fsfreeze-status") == {"return": "thawed"}
        assert BlockedWrite(scratch.xfs / "after-the-hung-freeze", b"x").finished_within(5)
        assert not (agent.workdir / MARKER_NAME).exists()
        ping(client)
        hung_mounts.release()
        assert timed(client, "guest-fsfreeze-status") == {"return": "thawed"}


def test_sigterm_stops_the_agent_with_calls_stuck(hung_mounts: HungMounts, tmp_path: Path) -> None:
    with agent_in(hung_mounts, tmp_path) as agent:
        client = agent.client()
        hung_mounts.hold()
        stuck = client.execute(
            "guest-exec",
            {"path": "/bin/cat", "arg": [str(hung_mounts.fuse / "data")], "capture-output": True},
        )["return"]["pid"]
        assert "error" in timed(client, "guest-file-open", {"path": str(hung_mounts.blk / "data")})
        assert timed(client, "guest-exec-status", {"pid": stuck}) == {"return": {"exited": False}}
        ping(client)
        start = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        assert eventually(lambda: not agent.sock.exists(), seconds=5)
        assert eventually(lambda: not (agent.workdir / "agent.pid").exists(), seconds=5)
        assert eventually(lambda: "still stuck in the kernel" in agent.log.read_text(), seconds=5)
        stopped = time.monotonic() - start
        # The kernel keeps the process until the stuck FUSE calls return.
        hung_mounts.release()
        assert agent.proc.wait(10) == 0
        assert stopped < 5


def test_an_agent_killed_during_a_hung_freeze_leaves_no_false_frozen_state(
    hung_mounts: HungMounts, tmp_path: Path
) -> None:
    """The marker is written before the FIFREEZE that hangs; the next agent checks it."""
    with agent_in(hung_mounts, tmp_path / "first", "--fs-timeout", "60") as first:
        client = first.client()
        hung_mounts.hold()
        client.send(
            json.dumps(
                {
                    "execute": "guest-fsfreeze-freeze-list",
                    "arguments": {"mountpoints": [str(hung_mounts.blk)]},
                }
            ).encode()
        )
        marker = first.workdir / MARKER_NAME
        assert eventually(lambda: waits_on_fuse(first.proc.pid), seconds=10)
        assert marker.exists()
        first.proc.kill()
        # Still held: the next agent (same state directory) cannot tell. It
        # serves once it has checked, and holds its log while it counts as frozen.
        statedir = ("-t", str(first.workdir))
        with agent_in(hung_mounts, tmp_path / "second", *statedir) as second:
            client = second.client()
            assert timed(client, "guest-fsfreeze-status") == {"return": "frozen"}
            hung_mounts.release()
            assert timed(client, "guest-fsfreeze-thaw") == {"return": 0}
            assert timed(client, "guest-fsfreeze-status") == {"return": "thawed"}
            assert f"{hung_mounts.blk}: cannot tell" in second.log.read_text()
        assert first.proc.wait(10) == -signal.SIGKILL
        with agent_in(hung_mounts, tmp_path / "third", *statedir) as third:  # no marker left
            assert timed(third.client(), "guest-fsfreeze-status") == {"return": "thawed"}
        assert not marker.exists()


@dataclass
class Row:
    """What one agent did with one request on a held mount (seconds, None: no answer)."""

    answer: float | None
    ping: float | None
    sigterm: float | None  # until it exited, or removed its pid file (its last step)


def leashed(
    client: SocketClient, name: str, arguments: dict[str, Any] | None = None
) -> float | None:
    """Seconds until the reply, or None when none came within the leash."""
    client.sock.settimeout(LEASH)
    start = time.monotonic()
    try:
        client.execute(name, arguments)
    except TimeoutError:
        return None
    return time.monotonic() - start


def hang_and_stop(
    mounts: HungMounts, agent: RunningAgent, name: str, arguments: dict[str, Any]
) -> Row:
    client = agent.client()
    mounts.hold()
    answer = leashed(client, name, arguments or None)
    ping = leashed(client, "guest-ping") if answer is not None else None
    pidfile = agent.workdir / "agent.pid"  # trio-qga's; qemu-ga writes one only with -d
    has_pidfile = pidfile.exists()
    assert has_pidfile == (agent.log.name == "agent.log")
    start = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    stopped = eventually(
        lambda: agent.proc.poll() is not None or (has_pidfile and not pidfile.exists()),
        seconds=LEASH,
    )
    return Row(answer, ping, time.monotonic() - start if stopped else None)


def next_status_after_sigkill(mounts: HungMounts, start: Callable[..., Any], workdir: Path) -> str:
    """guest-fsfreeze-status of the agent started after the one killed in a hung freeze."""
    with start(workdir / "killed", "--fs-timeout", "60") as first:
        client = first.client()
        mounts.hold()
        request = {"mountpoints": [str(mounts.blk)]}
        client.send(
            json.dumps({"execute": "guest-fsfreeze-freeze-list", "arguments": request}).encode()
        )
        assert eventually(lambda: waits_on_fuse(first.proc.pid), seconds=10)
        assert (first.workdir / MARKER_NAME).exists()
        first.proc.kill()
        mounts.release()
        first.proc.wait(20)
        first.sock.unlink(missing_ok=True)  # killed: it could not remove it
    with start(workdir / "killed") as second:
        status: str = second.client().execute("guest-fsfreeze-status")["return"]
    return status


@pytest.mark.qemu_ga
def test_the_issue_table(hung_mounts: HungMounts, tmp_path: Path) -> None:
    """The issue's requests against trio-qga (--fs-timeout 1) and qemu-ga 7.2."""
    qemu_ga_binary()  # skips loudly when it is not installed (fails in CI)
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("guest-get-fsinfo (fuseblk)", "guest-get-fsinfo", {}),
        ("guest-file-open (fuse)", "guest-file-open", {"path": str(hung_mounts.fuse / "data")}),
        ("guest-file-open (fuseblk)", "guest-file-open", {"path": str(hung_mounts.blk / "data")}),
        (
            "guest-fsfreeze-freeze-list (fuseblk)",
            "guest-fsfreeze-freeze-list",
            {"mountpoints": [str(hung_mounts.blk)]},
        ),
    ]
    starts: dict[str, Callable[..., Any]] = {
        "trio-qga": lambda workdir, *extra: agent_in(hung_mounts, workdir, *extra),
        "qemu-ga": lambda workdir, *extra: qemu_ga_in(hung_mounts, workdir),
    }
    rows: dict[str, dict[str, Row]] = {}
    for label, name, arguments in requests:
        for agent_name, start in starts.items():
            with start(tmp_path / f"{agent_name}-{name}") as agent:
                rows.setdefault(label, {})[agent_name] = hang_and_stop(
                    hung_mounts, agent, name, arguments
                )
    statuses = {
        agent_name: next_status_after_sigkill(hung_mounts, start, tmp_path / agent_name)
        for agent_name, start in starts.items()
    }

    def seconds(value: float | None, missing: str) -> str:
        return missing if value is None else f"{value:.2f} s"

    lines = ["| request | qemu-ga 7.2 | trio-qga |", "| --- | --- | --- |"]
    for label, row in rows.items():
        cells = [
            seconds(row[agent].answer, "no answer in 3 s") for agent in ("qemu-ga", "trio-qga")
        ]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    for what, field_name, missing in (
        ("guest-ping afterwards", "ping", "never answered"),
        ("SIGTERM (qemu-ga: exit; trio-qga: pid file removed)", "sigterm", "ignored for 3 s"),
    ):
        cells = [
            ", ".join(seconds(getattr(row[agent], field_name), missing) for row in rows.values())
            for agent in ("qemu-ga", "trio-qga")
        ]
        lines.append(f"| {what} | {cells[0]} | {cells[1]} |")
    lines.append(
        "| the next agent after SIGKILL in the hung freeze"
        f" | {statuses['qemu-ga']} | {statuses['trio-qga']} |"
    )
    print("\n" + "\n".join(lines))
    for row in rows.values():  # trio-qga: every answer in bounded time, then the rest
        ours = row["trio-qga"]
        assert ours.answer is not None
        assert ours.answer < FS_TIMEOUT + MARGIN
        assert ours.ping is not None
        assert ours.sigterm is not None
        assert ours.sigterm < 5
    assert statuses["trio-qga"] == "thawed"
