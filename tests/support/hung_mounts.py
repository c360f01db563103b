"""Hung mounts for the tests, in a mount namespace of their own.

``hung_mounts`` (module scope) mounts two ``hungfs.py`` filesystems: a
plain ``fuse`` one and a ``fuseblk`` one on a loop device (what disk and
filesystem walkers take for a real disk). They live in a private mount
namespace held by a sleeping process, so nothing else on this machine (other
test runs, monitoring, the host's own walkers) ever sees them hang; agents
under test are started inside that namespace with :meth:`HungMounts.command`.
The namespace also holds a copy of the scratch xfs (``scratch.py``), a
filesystem that freezes, deeper than the fuseblk mount so that a freeze of
both freezes it first.

Teardown releases the gates, ends the FUSE daemons (the kernel then fails
whatever still waits on them), ends the namespace and detaches the loop
device: nothing is left hung.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.system.fsfreeze.ioctl import ALLOW_ENV
from tests.support.processes import wait_or_kill
from tests.support.scratch import Scratch

HUNGFS = str(Path(__file__).with_name("hungfs.py"))


@dataclass
class HungMounts:
    base: Path
    fuse: Path  # plain fuse: no block device
    blk: Path  # fuseblk on ``loop``
    loop: str
    xfs: Path  # the scratch xfs, freezable
    holder: subprocess.Popen[bytes]  # the namespace's sleeping process
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def mount_table(self) -> Path:
        """mountinfo lines of the namespace for these three mounts only."""
        return self.base / "mountinfo"

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace (nsenter execs it: same pid)."""
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv]

    def environment(self) -> dict[str, str]:
        """What an agent's environment adds: the fuseblk mount freezable."""
        allowed = os.environ.get(ALLOW_ENV, "")
        return {ALLOW_ENV: os.pathsep.join(filter(None, [allowed, str(self.blk)]))}

    def _steer(self, word: str) -> None:
        for daemon in self.daemons:
            assert daemon.stdin is not None
            assert daemon.stdout is not None
            daemon.stdin.write(word.encode() + b"\n")
            daemon.stdin.flush()
            ready, _, _ = select.select([daemon.stdout], [], [], 10)
            assert ready, f"hungfs did not acknowledge {word}"
            assert daemon.stdout.readline().strip() == word.encode()

    def hold(self) -> None:
        """From now on every operation of both filesystems blocks."""
        self._steer("hold")

    def release(self) -> None:
        self._steer("release")


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _unavailable(message: str) -> None:
    message = f"hung FUSE mounts unavailable ({message}): these tests need root, fuse and loop"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _wait_for_mounts(holder: int, mountpoints: list[Path], timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = Path(f"/proc/{holder}/mountinfo").read_text().splitlines()
        found = [line for line in lines if line.split()[4] in map(str, mountpoints)]
        if len(found) == len(mountpoints):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"not mounted: {mountpoints}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def hung_mounts(
    tmp_path_factory: pytest.TempPathFactory, scratch_filesystems: Scratch
) -> Iterator[HungMounts]:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        _unavailable("not root, or no /dev/fuse")
    for tool in ("nsenter", "unshare", "losetup"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is missing")
    base = tmp_path_factory.mktemp("hungfs")
    image = base / "blk.img"
    image.write_bytes(b"")
    os.truncate(image, 8 << 20)
    try:
        loop = _run("losetup", "--find", "--show", str(image)).strip()
    except subprocess.CalledProcessError as err:
        _unavailable(f"losetup: {err.stderr.strip()}")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "1d"])
    mounts = HungMounts(
        base=base,
        fuse=base / "fuse",
        blk=base / "blk",
        loop=loop,
        xfs=scratch_filesystems.xfs,
        holder=holder,
    )
    try:
        mounts.fuse.mkdir()
        mounts.blk.mkdir()
        # The namespace exists once unshare has exec'd sleep.
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.02)
        for mountpoint, extra in ((mounts.fuse, []), (mounts.blk, ["--blkdev", loop])):
            mounts.daemons.append(
                subprocess.Popen(
                    mounts.command(sys.executable, HUNGFS, str(mountpoint), *extra),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        lines = _wait_for_mounts(holder.pid, [mounts.fuse, mounts.blk, mounts.xfs])
        mounts.mount_table.write_text("".join(line + "\n" for line in lines))
        yield mounts
    finally:
        for daemon in mounts.daemons:
            if daemon.poll() is None and daemon.stdin is not None:
                daemon.stdin.close()  # hungfs exits: the kernel aborts the connections
        for daemon in mounts.daemons:
            wait_or_kill(daemon, 10)
            if daemon.stdout is not None:
                daemon.stdout.close()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # Detached now, or (busy until the namespace's last user is gone) as soon as free.
        subprocess.run(["losetup", "--detach", loop], check=False, capture_output=True)
