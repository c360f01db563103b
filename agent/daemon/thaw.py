"""Waiting, for a bounded time, until the agent no longer reports filesystems frozen.

Restarting or stopping the agent while the host has the guest frozen would thaw
it under the host's feet (SIGTERM thaws, as in qemu-ga), in the middle of the
snapshot the freeze is for. So the Debian package's maintainer scripts and
``trio-qga-service restart|remove`` first ask the agent whether it is frozen,
and wait for the thaw. They ask as an agent that starts does: the frozen marker
(``qga.state.isfrozen``) in its state directory, which exists from before the
first FIFREEZE until after the last FITHAW; qemu-ga keeps the same one. The
state directory is the one the agent's configuration file names (``statedir=``
in /etc/qemu/qemu-ga.conf), else qemu-ga's default.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from agent.core.config import DEFAULT_STATEDIR
from agent.daemon import conffile
from agent.system.fsfreeze.marker import FrozenMarker

POLL_INTERVAL = 0.5  # seconds between two looks at the marker
DEFAULT_WAIT = 60.0  # seconds the package's scripts wait for a thaw by default


@dataclasses.dataclass(frozen=True)
class Frozen:
    """What the marker says: since when, and what (None: it does not say)."""

    marker: Path
    since: float
    mountpoints: list[str] | None

    def describe(self) -> str:
        what = ", ".join(self.mountpoints) if self.mountpoints else "filesystems"
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"the agent reports {what} frozen since {when} ({self.marker} exists)"


def statedir(config_file: str | None = None) -> str:
    """The agent's state directory, as its configuration file sets it
    (``-c FILE``, else $QGA_CONF, else /etc/qemu/qemu-ga.conf)."""
    path, required = conffile.config_file(config_file)
    settings = conffile.load(path, required)
    return str(settings.get("statedir", DEFAULT_STATEDIR))


def frozen(state: str) -> Frozen | None:
    """What the marker in ``state`` says, or None when there is no marker."""
    marker = FrozenMarker(state)
    try:
        since = marker.path.lstat().st_mtime
    except FileNotFoundError:
        return None
    return Frozen(marker.path, since, marker.mountpoints())


def wait_thawed(
    state: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = print,
) -> Frozen | None:
    """Wait up to ``timeout`` seconds for the marker to go; None once it has,
    else what it still says. ``say`` tells, once, that it waits and why."""
    deadline = clock() + timeout
    told = False
    while (found := frozen(state)) is not None:
        left = deadline - clock()
        if left <= 0:
            return found
        if not told:
            say(f"{found.describe()}; waiting up to {timeout:g} s for the thaw")
            told = True
        sleep(min(POLL_INTERVAL, left))
    return None
