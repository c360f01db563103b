"""The agent's files under predictable names, in a state directory others can write.

A user of a guest whose agent keeps its pid file and state in a shared
directory (``--statedir /tmp``) can plant something under those names before
the agent starts. Nothing planted is followed, opened blocking, truncated or
written through; the agent reports the name and why. qemu-ga 7.2 writes its
pid file through a link (recorded below).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.core.store import HandleCounter
from agent.daemon.pidfile import PidfileError, held_pidfile
from agent.system.fsfreeze.marker import FrozenMarker
from agent.system.ownfiles import PlantedFile, open_own_file
from agent.system.userfiles import replace_file
from tests.support.reference import qemu_ga_binary

PRECIOUS = b"root:$6$precious:19000:0:99999:7:::\n"


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """A file that must stay as it is (standing in for /etc/shadow)."""
    path = tmp_path / "precious"
    path.write_bytes(PRECIOUS)
    path.chmod(0o600)
    return path


def link_to(target: Path) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def hard_link_to(target: Path) -> Callable[[Path], None]:
    return lambda path: os.link(target, path)


def fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


PLANTS = {
    "symlink": ("it is a symbolic link", link_to),
    "hard link": ("it has 2 hard links", hard_link_to),
    "fifo": ("it is a FIFO, not a regular file", lambda _: fifo),
}


@pytest.fixture(params=list(PLANTS))
def planted(request: pytest.FixtureRequest, precious: Path) -> tuple[Callable[[Path], None], str]:
    reason, make = PLANTS[request.param]
    return make(precious), reason


def test_a_planted_pid_file_is_refused(
    tmp_path: Path, precious: Path, planted: tuple[Callable[[Path], None], str]
) -> None:
    plant, reason = planted
    path = tmp_path / "trio-qga.pid"
    plant(path)
    with pytest.raises(PidfileError) as caught, held_pidfile(str(path)):
        pass
    assert str(caught.value) == f"cannot open pid file {path}: refused, {reason}"
    assert precious.read_bytes() == PRECIOUS


def test_a_planted_handle_counter_is_refused(
    tmp_path: Path,
    precious: Path,
    planted: tuple[Callable[[Path], None], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plant, reason = planted
    state = tmp_path / "qga.state"
    plant(state)
    # Refused as a damaged state file: said, moved aside (renamed, not followed),
    # and replaced by the agent's own file.
    counter = HandleCounter(str(tmp_path))
    assert f"is damaged (refused, {reason})" in caplog.text
    handle = counter.take()
    assert stat.S_ISREG(state.lstat().st_mode)
    assert state.lstat().st_nlink == 1
    assert state.read_text() == f"[global]\nfd_counter={handle + 1}\n"
    assert precious.read_bytes() == PRECIOUS


def test_a_planted_frozen_marker_is_neither_read_nor_written_through(
    tmp_path: Path, precious: Path, planted: tuple[Callable[[Path], None], str]
) -> None:
    plant, reason = planted
    marker = FrozenMarker(str(tmp_path))
    plant(marker.path)
    assert marker.mountpoints() is None  # "unknown": the thaw covers every filesystem
    with pytest.raises(PlantedFile) as caught:
        marker.write(["/mnt"])
    assert caught.value.strerror == f"refused, {reason}"
    assert precious.read_bytes() == PRECIOUS


def test_own_files_are_still_made_read_and_truncated(tmp_path: Path) -> None:
    marker = FrozenMarker(str(tmp_path))
    marker.write(["/mnt/a", "/mnt/b"])
    marker.write(["/mnt/c"])
    assert marker.mountpoints() == ["/mnt/c"]
    with held_pidfile(str(tmp_path / "agent.pid")):
        assert (tmp_path / "agent.pid").read_text() == f"{os.getpid()}\n"
    counter = HandleCounter(str(tmp_path))
    assert HandleCounter(str(tmp_path)).take() == counter.take()  # read back from the file


# --- replacing a file whole (agent.system.userfiles.replace_file) --------------------


def record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of what ``os.fsync`` is called on from now on, in order."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_a_replaced_file_takes_the_place_of_a_plant_without_following_it(
    tmp_path: Path, precious: Path, planted: tuple[Callable[[Path], None], str]
) -> None:
    plant, _ = planted
    path = tmp_path / "own"
    plant(path)
    replace_file(path, b"new\n", durable=False)
    status = path.lstat()
    assert (stat.S_ISREG(status.st_mode), status.st_nlink, stat.S_IMODE(status.st_mode)) == (
        True,
        1,
        0o600,
    )
    assert path.read_bytes() == b"new\n"
    assert precious.read_bytes() == PRECIOUS
    assert sorted(os.listdir(tmp_path)) == ["own", "precious"]  # no temporary left


def test_a_replace_that_fails_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "own"
    path.write_bytes(b"old\n")

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        replace_file(path, b"new\n", durable=True)
    monkeypatch.undo()
    assert path.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["own"]


@pytest.mark.parametrize("relative", [False, True])
def test_durable_syncs_the_new_file_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    synced = record_syncs(monkeypatch)
    if relative:
        dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            replace_file("own", b"new\n", dir_fd=dir_fd, durable=True)
        finally:
            os.close(dir_fd)
    else:
        replace_file(tmp_path / "own", b"new\n", durable=True)
    [new_file, directory] = synced
    assert new_file.startswith(f"{tmp_path}/.own.")  # before the rename
    assert directory == str(tmp_path)  # after it
    assert (tmp_path / "own").read_bytes() == b"new\n"


def test_not_durable_syncs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = record_syncs(monkeypatch)
    replace_file(tmp_path / "own", b"new\n", durable=False)
    assert synced == []


def test_the_handle_counter_is_saved_without_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It is saved at every guest-file-open (see replace_file for why no sync)."""
    counter = HandleCounter(str(tmp_path))
    synced = record_syncs(monkeypatch)
    handle = counter.take()
    assert (tmp_path / "qga.state").read_text() == f"[global]\nfd_counter={handle + 1}\n"
    assert synced == []


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another user's needs root to make")
def test_a_file_of_another_users_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qga.state.isfrozen"
    path.write_text("[]")
    os.chown(path, 4242, 4242)
    with pytest.raises(PlantedFile) as caught:
        open_own_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert caught.value.strerror == "refused, it belongs to uid 4242, neither the user nor root"
    assert path.read_text() == "[]"
    assert stat.S_ISREG(path.lstat().st_mode)


@pytest.mark.qemu_ga
def test_qemu_ga_writes_its_pid_through_a_planted_link(tmp_path: Path, precious: Path) -> None:
    """The record of what qemu-ga 7.2 does (it writes its pid file only with -d):
    the link's target, here a scratch file, is truncated and gets its pid."""
    link = tmp_path / "qemu-ga.pid"
    link.symlink_to(precious)
    sock = tmp_path / "qemu-ga.sock"
    argv = [qemu_ga_binary(), "-d", "-m", "unix-listen", "-p", str(sock), "-t", str(tmp_path)]
    subprocess.run([*argv, "-f", str(link)], check=True, timeout=60)
    deadline = time.monotonic() + 60
    while precious.read_bytes() == PRECIOUS and time.monotonic() < deadline:
        time.sleep(0.05)
    written = precious.read_text()
    pid = int(written)
    try:
        assert written == f"{pid}\n"
    finally:
        _stop(pid)


def _stop(pid: int) -> None:
    """Stop the qemu-ga daemon this test started (not our child: it forked twice)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
