"""System information: host name, OS, time zone, clock, users, load and CPU
and disk statistics. All read-only; files are read through ``ctx.root``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from typing import Any

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError, os_error_text
from agent.system.sysinfo.osrelease import os_release_info
from agent.system.sysinfo.procfs import parse_cpustats, parse_diskstats

handlers = HandlerSet()

# Where qemu-ga looks for os-release, in order; QGA_OS_RELEASE names the one
# file to read instead (QEMU's tests set it).
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
OS_RELEASE_ENV = "QGA_OS_RELEASE"


def read_proc_file(ctx: AgentContext, path: str) -> str:
    """A /proc file's text; an error reply worded as qemu-ga's if it cannot be read."""
    try:
        return ctx.root.path(path).read_text(errors="replace")
    except OSError as err:
        raise GenericError(f'open("{path}"): {os_error_text(err)}') from err


@handlers.command("guest-get-host-name")
def guest_get_host_name(ctx: AgentContext) -> dict[str, object]:
    return {"host-name": socket.gethostname()}


@handlers.command("guest-get-time")
def guest_get_time(ctx: AgentContext) -> int:
    # qemu-ga reports microseconds times 1000; the clock's nanoseconds are finer.
    return time.time_ns()


@handlers.command("guest-get-timezone")
def guest_get_timezone(ctx: AgentContext) -> dict[str, object]:
    now = time.localtime()
    reply: dict[str, object] = {}
    if now.tm_zone:
        reply["zone"] = now.tm_zone  # the abbreviation in force now, as qemu-ga gives it
    reply["offset"] = now.tm_gmtoff  # seconds east of UTC
    return reply


@handlers.command("guest-get-load")
def guest_get_load(ctx: AgentContext) -> dict[str, object]:
    try:
        load1, load5, load15 = os.getloadavg()
    except OSError as err:
        raise GenericError(f"cannot query load average: {os_error_text(err)}") from err
    return {"load1m": load1, "load5m": load5, "load15m": load15}


@handlers.command("guest-get-osinfo")
def guest_get_osinfo(ctx: AgentContext) -> dict[str, object]:
    uname = os.uname()
    info: dict[str, object] = {
        "kernel-release": uname.release,
        "kernel-version": uname.version,
        "machine": uname.machine,
    }
    text = _read_os_release(ctx)
    if text is not None:
        info.update(os_release_info(text))
    return info


def _read_os_release(ctx: AgentContext) -> str | None:
    """The first os-release file that can be read; None if there is none (the
    reply then has the kernel's members only, as with qemu-ga)."""
    chosen = os.environ.get(OS_RELEASE_ENV)
    candidates = (
        [chosen] if chosen is not None else [str(ctx.root.path(p)) for p in OS_RELEASE_PATHS]
    )
    for path in candidates:
        try:
            with open(path, "rb") as file:
                return file.read(1 << 20).decode(errors="replace")
        except OSError:
            continue
    return None


@handlers.command("guest-get-users")
def guest_get_users(ctx: AgentContext) -> list[dict[str, object]]:
    import psutil  # on first use: it costs the agent's start-up otherwise

    return logged_in_users(psutil.users())


def logged_in_users(sessions: Iterable[Any]) -> list[dict[str, object]]:
    """One entry per user name with their earliest login, in order of first
    appearance, as qemu-ga reports utmp's USER_PROCESS entries (psutil lists
    those, with start times in whole seconds)."""
    earliest: dict[str, float] = {}
    for session in sessions:
        started = float(session.started)
        if session.name not in earliest or started < earliest[session.name]:
            earliest[session.name] = started
    return [
        {"user": name, "login-time": _as_printed(started)} for name, started in earliest.items()
    ]


def _as_printed(seconds: float) -> float | int:
    """qemu-ga prints a double with ``%.17g``: a whole number has no ``.0``."""
    return int(seconds) if seconds.is_integer() else seconds


@handlers.command("guest-get-cpustats")
def guest_get_cpustats(ctx: AgentContext) -> list[dict[str, Any]]:
    return parse_cpustats(read_proc_file(ctx, "/proc/stat"), os.sysconf("SC_CLK_TCK"))


@handlers.command("guest-get-diskstats")
def guest_get_diskstats(ctx: AgentContext) -> list[dict[str, Any]]:
    return parse_diskstats(read_proc_file(ctx, "/proc/diskstats"))
