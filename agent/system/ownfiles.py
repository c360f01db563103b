"""The agent's own files under predictable names: the pid file, the handle counter
(``qga.state``) and the frozen marker (``qga.state.isfrozen``).

They may live in a directory others can write (``--statedir /tmp``, as in the
README's first command), where a user can plant a link, a FIFO or a file of
their own under those names before the agent starts. Opened here, such a plant
is refused with :class:`PlantedFile` (an :class:`OSError`, so callers report it
as any other failure to open): never followed, never opened blocking, and a
file is checked before it is truncated.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from agent.system.userfiles import file_problem

_ALWAYS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class PlantedFile(OSError):
    """Something other than the agent's own regular file is under the name."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(errno.EPERM, f"refused, {reason}", str(path))


def open_own_file(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags, mode)`` for a file of the agent's own: a descriptor
    of a regular file with one name, the agent's (or root's); ``O_TRUNC`` is
    applied only once that is known."""
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | _ALWAYS, mode)
    except OSError as err:
        # A link (O_NOFOLLOW), or a FIFO without a reader opened for writing.
        if err.errno in (errno.ELOOP, errno.ENXIO):
            problem = file_problem(os.lstat(path), os.geteuid())
            if problem is not None:
                raise PlantedFile(path, problem) from err
        raise
    try:
        problem = file_problem(os.fstat(fd), os.geteuid())
        if problem is not None:
            raise PlantedFile(path, problem)
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_own_file(path: str | Path) -> bytes:
    """The content of the agent's own file ``path`` (see :func:`open_own_file`)."""
    with os.fdopen(open_own_file(path, os.O_RDONLY), "rb") as own:
        return own.read()
