"""``-d``: become a daemon, the classic way, with a line back to the launcher.

Fork, ``setsid``, fork again (so the daemon can never reacquire a terminal),
``chdir /``, umask 077, the standard streams on ``/dev/null`` and every other
inherited descriptor closed (daemon(7)). Unlike
qemu-ga, whose launcher exits with 0 as soon as it has forked, the launcher
here waits until the daemon serves, or prints why it could not start (pid
file locked, device missing, ...) and exits with 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Collection

READY = b"ready\n"


class Launcher:
    """The daemon's end of the pipe to the process that started it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def ready(self) -> None:
        self._send(READY)

    def failed(self, message: str) -> None:
        self._send(message.encode(errors="replace"))

    def _send(self, data: bytes) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):  # the launcher may be gone
            os.write(fd, data)
        os.close(fd)


def detach(keep: Collection[int] = ()) -> Launcher:
    """Continue as a daemon; the launching process exits once the daemon reports.

    ``keep``: descriptors the daemon needs (a socket systemd passed).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        os._exit(_wait_for_daemon(child, read_end))
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    os.umask(0o077)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _close_inherited(keep={0, 1, 2, write_end, *keep})
    return Launcher(write_end)


def _close_inherited(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if low < fd:  # os.closerange(n, n) would close everything from n on
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _wait_for_daemon(child: int, read_end: int) -> int:
    """The launcher's exit status: 0 once the daemon serves, 1 if it failed."""
    os.waitpid(child, 0)  # the first child exits at once, leaving the daemon
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    report = b"".join(chunks)
    if report == READY:
        return 0
    message = report.decode(errors="replace").strip() or "the daemon exited before serving"
    print(f"trio-qga: {message}", file=sys.stderr, flush=True)
    return 1
