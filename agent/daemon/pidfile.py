"""The pid file: written at start, locked while the agent runs, removed at exit.

The lock (as qemu-ga's lockf) keeps a second agent from starting on the same
pid file, and from overwriting the pid of the one that holds it. A link, FIFO
or someone else's file planted under its name is refused (``agent/system/ownfiles.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from agent.system.ownfiles import open_own_file


class PidfileError(Exception):
    """The pid file is held by another process or cannot be written."""


@contextlib.contextmanager
def held_pidfile(path: str) -> Iterator[None]:
    try:
        fd = open_own_file(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise PidfileError(f"cannot open pid file {path}: {err.strerror}") from err
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise PidfileError(
                f"pid file {path} is locked by another agent (pid {holder})"
            ) from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        os.close(fd)
