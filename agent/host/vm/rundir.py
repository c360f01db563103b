"""A VM's own directory (its sockets, its initrd, QEMU's log), in ``$TMPDIR``.

The launcher removes it when the VM ends, however the block ends. A launcher
killed outright (SIGKILL) cannot: QEMU dies with it (see :mod:`.process`), but
its directory stays. So each directory holds a lock for as long as its VM runs,
and every boot first removes the directories of this user whose lock nobody
holds: what a killed launcher left goes at the next boot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agent.host.vm.cache import try_lock_exclusive

PREFIX = "trio-qga-vm."
LOCK = "running"  # the file whose lock the launcher holds while the VM runs


@contextlib.contextmanager
def run_directory() -> Iterator[Path]:
    """A new directory for one VM, locked while the block runs, removed after it."""
    remove_abandoned(Path(tempfile.gettempdir()))
    run = Path(tempfile.mkdtemp(prefix=PREFIX))
    try:
        # Locked before it has its name: a sweep never sees the lock file unlocked.
        fd = os.open(run / f"{LOCK}.new", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(run / f"{LOCK}.new", run / LOCK)
            yield run
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(run, ignore_errors=True)


def remove_abandoned(directory: Path) -> list[Path]:
    """Remove the VM directories in ``directory`` that are this user's and whose
    launcher is gone (their lock is free); those removed. A directory without
    the lock file is left: its launcher may be making it right now."""
    removed = []
    for candidate in directory.glob(PREFIX + "*"):
        try:
            if candidate.is_symlink() or candidate.stat().st_uid != os.geteuid():
                continue
        except OSError:
            continue
        fd = try_lock_exclusive(candidate / LOCK)
        if fd is None:
            continue  # running, or not ours to judge
        try:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        finally:
            os.close(fd)
    return removed
