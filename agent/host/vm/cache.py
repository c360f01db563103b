"""The launcher's cache: kernels, their modules, initramfs images.

``$TRIO_QGA_VM_CACHE``, else ``$XDG_CACHE_HOME/trio-qga/vm``, else
``~/.cache/trio-qga/vm``. Several processes may fill it at once (two test runs,
two ``trio-qga-vm`` commands): whoever fills it holds the exclusive lock of
:func:`cache_lock`, builds what it adds in a temporary name inside the cache and
renames it into place, so that nobody ever sees half of anything. What is in
place is never changed again, only removed (by :mod:`.kernel`, when no VM holds
it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import trio

LOCK_POLL = 0.05  # seconds between attempts at a lock someone else holds


def cache_dir() -> Path:
    explicit = os.environ.get("TRIO_QGA_VM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trio-qga" / "vm"


@contextlib.asynccontextmanager
async def file_lock(path: Path, *, shared: bool = False) -> AsyncIterator[None]:
    """``flock`` on ``path`` (created if missing), waited for without blocking Trio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        while True:
            try:
                fcntl.flock(fd, kind | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await trio.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def try_lock_exclusive(path: Path) -> int | None:
    """An fd holding ``path``'s exclusive lock, or None if anyone holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def cache_lock(cache: Path) -> contextlib.AbstractAsyncContextManager[None]:
    """The lock of whoever adds to or removes from the cache."""
    return file_lock(cache / "lock")


@contextlib.contextmanager
def staging(parent: Path, final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final``, renamed to ``final`` if the block
    succeeds and removed otherwise. Call it holding the cache lock."""
    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".new-", dir=parent))
    try:
        yield temporary
        if final.exists():  # left by a process that died between rename and use
            shutil.rmtree(final)
        temporary.rename(final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or its old content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".new-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
