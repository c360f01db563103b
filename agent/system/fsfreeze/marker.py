"""The state directory's frozen marker, ``qga.state.isfrozen``, as qemu-ga keeps it.

It exists from before the first FIFREEZE until after the last FITHAW, so an
agent that starts and finds it knows the guest may still be frozen and starts
in the frozen state (qemu-ga does the same). qemu-ga leaves it empty; trio-qga
writes the mountpoints it freezes, as a JSON list, so that the thaw after a
restart knows what to thaw. An empty or unreadable marker means "unknown":
the thaw then covers every freezable filesystem of the mount table. A link or
FIFO planted under its name (a shared state directory) is never followed nor
read, and is not written through (``agent.system.ownfiles``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.system.ownfiles import open_own_file, read_own_file

MARKER_NAME = "qga.state.isfrozen"


class FrozenMarker:
    def __init__(self, statedir: str) -> None:
        self.path = Path(statedir) / MARKER_NAME

    def exists(self) -> bool:
        return self.path.exists()

    def mountpoints(self) -> list[str] | None:
        """What the marker says was frozen; None when it does not say (qemu-ga's)."""
        try:
            value = json.loads(read_own_file(self.path))
        except (OSError, ValueError):
            return None
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        return None

    def write(self, mountpoints: list[str]) -> None:
        """Create the marker (before anything is frozen).

        Not fsynced: it serves an agent that restarts, not a guest that reboots
        (after a reboot nothing is frozen; qemu-ga's default state directory,
        /var/run, does not even survive one).
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        with os.fdopen(open_own_file(self.path, flags), "w") as marker:
            json.dump(mountpoints, marker)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
