"""Programs the exec tests run as a guest's programs (harmless, on this machine)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

# A shell that starts a daemon holding its stdout, writes the daemon's pid to
# ``pidfile`` and exits: the output pipe stays open after the exit.
DAEMON = "sleep 25 & echo $! > {pidfile}; echo started"


def kill_daemon(pidfile: Path) -> None:
    """SIGKILL to the daemon of :data:`DAEMON`, if it started."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
