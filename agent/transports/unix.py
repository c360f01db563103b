"""unix-listen: a listening unix socket, one client served at a time."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Iterator

import trio

from agent.transports.listen import serve_listener
from agent.transports.types import StreamHandler

log = logging.getLogger(__name__)


async def serve_unix_listen(
    path: str,
    mode: int,
    handler: StreamHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` (created with ``mode``) and serve clients one after another.

    The socket file is removed when serving stops.
    """
    with _listening_socket(path, mode) as sock:
        log.info("listening on unix socket %s", path)
        await serve_listener(sock, handler, task_status=task_status)


@contextlib.contextmanager
def _listening_socket(path: str, mode: int) -> Iterator[socket.socket]:
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask, not a chmod after bind, so the socket is never reachable
        # with looser permissions, even for an instant.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        created = os.stat(path)
    except BaseException:
        sock.close()
        raise
    try:
        sock.listen(8)
        yield sock
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (created.st_dev, created.st_ino):
                os.unlink(path)


def _remove_stale(path: str) -> None:
    """Remove a socket file left by a dead agent; refuse to touch anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("replacing stale socket %s", path)
        os.unlink(path)
        return
    finally:
        probe.close()
    raise FileExistsError(f"another process is listening on {path}")
