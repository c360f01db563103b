"""Scratch filesystems that the fsfreeze tests may freeze for real, and nothing else.

Once per session: an ext4 image and an xfs image (sparse files from
``truncate``) mounted on loop devices in a temporary directory, the xfs one
nested inside the ext4 one (a child to freeze before its parent), a tmpfs
(which no freeze may cover) and a bind mount of an ext4 directory (a second
mount of the ext4 device). The agent under test gets ``mount_table``: the
lines of ``/proc/self/mountinfo`` for these mounts only. Their mountpoints
are added to ``TRIO_QGA_FREEZE_ALLOW`` (see ``conftest.py``), the only paths
the real ioctl seam will freeze in this test session.

The ``scratch`` fixture thaws all of them after every test, whatever happened.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import trio

from agent.system.fsfreeze.ioctl import ALLOW_ENV, thaw_mountpoint


@dataclass(frozen=True)
class Scratch:
    base: Path
    ext4: Path  # mountpoint of the ext4 filesystem
    xfs: Path  # mountpoint of the xfs filesystem, inside ext4
    tmpfs: Path  # not freezable
    bind: Path  # a bind mount of ext4/shared: the ext4 device again
    mount_table: Path  # mountinfo of these four mounts, nothing else

    @property
    def ext4_image(self) -> Path:
        """The sparse file behind the ext4 loop device (FITRIM punches holes in it)."""
        return self.base / "ext4.img"

    @property
    def freezable(self) -> list[Path]:
        return [self.ext4, self.xfs]

    @property
    def mounts(self) -> list[Path]:
        """In mount order; unmounted in reverse."""
        return [self.ext4, self.xfs, self.tmpfs, self.bind]

    def thaw_all(self) -> None:
        """FITHAW every scratch filesystem until it is thawed (errors ignored)."""
        for mountpoint in self.freezable:
            try:
                thaw_mountpoint(str(mountpoint))
            except OSError:
                pass


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def _unavailable(message: str, needs: str = "fsfreeze tests need root and loop") -> NoReturn:
    message = f"scratch filesystems unavailable ({message}): {needs}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def mount_scratch(base: Path) -> Scratch:
    scratch = Scratch(
        base=base,
        ext4=base / "ext4",
        xfs=base / "ext4" / "inner-xfs",
        tmpfs=base / "tmpfs",
        bind=base / "bind",
        mount_table=base / "mountinfo",
    )
    _run("truncate", "-s", "64M", str(scratch.ext4_image))
    _run("truncate", "-s", "320M", str(base / "xfs.img"))  # xfs wants 300 MB at least
    _run("mkfs.ext4", "-q", "-F", str(scratch.ext4_image))
    _run("mkfs.xfs", "-q", "-f", str(base / "xfs.img"))
    scratch.ext4.mkdir()
    _run("mount", "-o", "loop", str(scratch.ext4_image), str(scratch.ext4))
    scratch.xfs.mkdir()
    (scratch.ext4 / "shared").mkdir()
    _run("mount", "-o", "loop", str(base / "xfs.img"), str(scratch.xfs))
    scratch.tmpfs.mkdir()
    _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch.tmpfs))
    scratch.bind.mkdir()
    _run("mount", "--bind", str(scratch.ext4 / "shared"), str(scratch.bind))
    ours = {str(path) for path in scratch.mounts}
    lines = Path("/proc/self/mountinfo").read_text().splitlines(keepends=True)
    mine = [line for line in lines if line.split()[4] in ours]
    assert len(mine) == len(ours), mine
    scratch.mount_table.write_text("".join(mine))
    return scratch


def unmount_scratch(scratch: Scratch) -> None:
    scratch.thaw_all()
    for mountpoint in reversed(scratch.mounts):
        if os.path.ismount(mountpoint):
            # Lazy: a thread of a failed test may still hold a file open.
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@contextmanager
def small_tmpfs(mountpoint: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` (``1m``) at ``mountpoint``, to fill up (or read-only, to
    fail writes); unmounted after."""
    if os.geteuid() != 0:
        _unavailable("not root", "full-disk tests need root to mount a small tmpfs")
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        options = f"size={size},mode=0755" + (",ro" if read_only else "")
        _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint))
    except (OSError, subprocess.CalledProcessError) as err:
        _unavailable(str(getattr(err, "stderr", b"") or err), "full-disk tests need a tmpfs")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture(scope="session")
def scratch_filesystems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    if os.geteuid() != 0:
        _unavailable("not root")
    base = tmp_path_factory.mktemp("fsfreeze-scratch")
    try:
        scratch = mount_scratch(base)
    except (OSError, subprocess.CalledProcessError) as err:
        _unavailable(str(getattr(err, "stderr", b"") or err))
    allowed = os.environ.get(ALLOW_ENV, "")
    os.environ[ALLOW_ENV] = os.pathsep.join(
        [*filter(None, allowed.split(os.pathsep)), *map(str, scratch.mounts)]
    )
    try:
        yield scratch
    finally:
        os.environ[ALLOW_ENV] = allowed
        unmount_scratch(scratch)


@pytest.fixture
def scratch(scratch_filesystems: Scratch) -> Iterator[Scratch]:
    """The scratch filesystems, thawed again after the test whatever happened."""
    scratch_filesystems.thaw_all()
    try:
        yield scratch_filesystems
    finally:
        scratch_filesystems.thaw_all()


class BlockedWrite:
    """A write to ``path`` in a thread: it blocks while the filesystem is frozen."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data = path, data
        self.done = threading.Event()
        self.error: Exception | None = None
        threading.Thread(target=self._write, daemon=True).start()

    def _write(self) -> None:
        try:
            with open(self.path, "wb") as file:
                file.write(self.data)
                file.flush()
                os.fsync(file.fileno())
        except Exception as err:
            self.error = err
        finally:
            self.done.set()

    def blocked_for(self, seconds: float = 0.5) -> bool:
        """True if the write is still blocked ``seconds`` later."""
        return not self.done.wait(seconds)

    async def still_blocked(self, seconds: float = 0.5) -> bool:
        """:meth:`blocked_for` without blocking the trio loop (for in-process agents)."""
        return await trio.to_thread.run_sync(self.blocked_for, seconds)

    async def finished(self, seconds: float = 10.0) -> bool:
        """:meth:`finished_within` without blocking the trio loop."""
        return await trio.to_thread.run_sync(self.finished_within, seconds)

    def finished_within(self, seconds: float = 10.0) -> bool:
        if not self.done.wait(seconds):
            return False
        if self.error is not None:
            raise self.error
        return self.path.read_bytes() == self.data


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (to find a watchdog)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found
