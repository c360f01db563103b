"""guest-shutdown, guest-suspend-disk/-ram/-hybrid and guest-set-time.

Everything here changes the system, so it goes through the seams: commands
through ``ctx.executor`` (their argv from the configuration), files under
``ctx.root``, the clock through ``ctx.clock``. The power commands have
``success-response: false``: on success the handler returns and no reply is
sent; a failure is an error reply, with qemu-ga's text and what the command said.

Suspend finds its way as qemu-ga does: ``systemctl`` when systemd knows the
sleep target, else pm-utils, else writing ``/sys/power/state``; a configured
command (``--suspend-ram-command`` ...) replaces the search.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from agent.core.config import AgentConfig
from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError, os_error_text
from agent.system.executor import CommandResult, describe_failure
from agent.system.fsguard import FsTimeout

log = logging.getLogger(__name__)
handlers = HandlerSet()

_SHUTDOWN_FIELDS = {
    "powerdown": "poweroff_command",
    "halt": "halt_command",
    "reboot": "reboot_command",
}
_DEFAULTS = AgentConfig()

SYS_POWER_STATE = "/sys/power/state"
SYS_POWER_DISK = "/sys/power/disk"


def _detail(argv: Sequence[str], result: CommandResult) -> str:
    return describe_failure(argv, result)


@handlers.command("guest-shutdown")
async def guest_shutdown(ctx: AgentContext, mode: str | None) -> None:
    field = _SHUTDOWN_FIELDS.get("powerdown" if mode is None else mode)
    if field is None:
        raise GenericError("mode is invalid (valid values are: halt|powerdown|reboot")
    argv = getattr(ctx.config, field)
    if argv == getattr(_DEFAULTS, field):
        # qemu-ga 10.2: the mode's own command when there is one (BusyBox has no shutdown).
        own = "/sbin/" + field.removesuffix("_command")
        if os.access(ctx.root.path(own), os.X_OK):
            argv = (own,)
    log.info("guest-shutdown called, mode: %s", mode or "powerdown")
    result = await _run(ctx, argv, "child process has failed to shutdown")
    if result.returncode < 0:
        raise GenericError(f"child process has terminated abnormally: {_detail(argv, result)}")
    if result.returncode:
        raise GenericError(f"child process has failed to shutdown: {_detail(argv, result)}")


async def _run(ctx: AgentContext, argv: Sequence[str], failure: str) -> CommandResult:
    try:
        return await ctx.executor.run(argv)
    except OSError as err:
        raise GenericError(f"{failure}: cannot run {argv[0]}: {os_error_text(err)}") from err


# --- suspend -------------------------------------------------------------------


@dataclass(frozen=True)
class SuspendMode:
    name: str  # as in the config: suspend_<name>_command
    systemd_unit: str  # systemctl status <unit>: is the mode supported?
    systemctl_verb: str
    pm_is_supported: str  # pm-is-supported <flag>
    pm_program: str
    sys_state: str | None  # written to /sys/power/state (hybrid: see _sys_state_suspend)


DISK = SuspendMode("disk", "systemd-hibernate", "hibernate", "--hibernate", "pm-hibernate", "disk")
RAM = SuspendMode("ram", "systemd-suspend", "suspend", "--suspend", "pm-suspend", "mem")
HYBRID = SuspendMode(
    "hybrid",
    "systemd-hybrid-sleep",
    "hybrid-sleep",
    "--suspend-hybrid",
    "pm-suspend-hybrid",
    None,
)

NOT_SUPPORTED = "the requested suspend mode is not supported by the guest"


class _NotFound(Exception):
    """The helper program is not installed."""


async def _helper(ctx: AgentContext, argv: Sequence[str]) -> int:
    """Exit status of ``argv``; :class:`_NotFound` when it is not installed."""
    try:
        result = await ctx.executor.run(argv)
    except FileNotFoundError as err:
        raise _NotFound from err
    except OSError as err:
        raise GenericError(f"failed to create child process, error '{os_error_text(err)}'") from err
    if result.returncode < 0:
        raise GenericError(
            f"the helper program '{argv[0]}' was killed by signal {-result.returncode}"
        )
    return result.returncode


async def _systemd_supports(ctx: AgentContext, mode: SuspendMode) -> bool:
    try:
        status = await _helper(ctx, ["systemctl", "status", mode.systemd_unit])
    except _NotFound:
        return False
    # LSB codes: 1-3 (e.g. 3, not running) mean the unit exists; 4 is an unknown unit.
    return 0 < status < 4


async def _systemd_suspend(ctx: AgentContext, mode: SuspendMode) -> None:
    program = f"systemctl {mode.systemctl_verb}"
    try:
        status = await _helper(ctx, ["systemctl", mode.systemctl_verb])
    except _NotFound:
        raise GenericError(f"the helper program '{program}' was not found") from None
    if status:
        raise GenericError(
            f"the helper program '{program}' returned an unexpected exit status code ({status})"
        )


async def _pmutils_supports(ctx: AgentContext, mode: SuspendMode) -> bool:
    try:
        status = await _helper(ctx, ["pm-is-supported", mode.pm_is_supported])
    except _NotFound:
        return False
    if status not in (0, 1):
        raise GenericError(
            "the helper program 'pm-is-supported' returned an unexpected exit"
            f" status code ({status})"
        )
    return status == 0


async def _pmutils_suspend(ctx: AgentContext, mode: SuspendMode) -> None:
    try:
        status = await _helper(ctx, [mode.pm_program])
    except _NotFound:
        raise GenericError(f"the helper program '{mode.pm_program}' was not found") from None
    if status:
        raise GenericError(
            f"the helper program '{mode.pm_program}' returned an unexpected exit"
            f" status code ({status})"
        )


def _sys_words(path: Path) -> list[str]:
    """The words of a /sys/power file, without the brackets around the current one."""
    try:
        text = path.read_text()
    except OSError:
        return []
    return [word.strip("[]") for word in text.split()]


Write = tuple[str, Path, str]  # the file as the guest names it, under the root, the word


def _sys_state_writes(ctx: AgentContext, mode: SuspendMode) -> list[Write] | None:
    """What to write under /sys/power for ``mode``, or None when the kernel cannot.

    Hybrid (which qemu-ga only does through systemd or pm-utils) is the kernel's
    own: ``suspend`` into /sys/power/disk, then ``disk`` into /sys/power/state.
    """
    state = ctx.root.path(SYS_POWER_STATE)
    states = _sys_words(state)
    if mode.sys_state is not None:
        return [(SYS_POWER_STATE, state, mode.sys_state)] if mode.sys_state in states else None
    disk = ctx.root.path(SYS_POWER_DISK)
    if "disk" in states and "suspend" in _sys_words(disk):
        return [(SYS_POWER_DISK, disk, "suspend"), (SYS_POWER_STATE, state, "disk")]
    return None


def _write_sys(writes: list[Write]) -> None:
    for name, path, word in writes:
        try:
            with open(path, "w") as sys_file:  # returns when the guest has woken up
                sys_file.write(word)
        except OSError as err:
            raise GenericError(f"suspend: cannot write to '{name}': {os_error_text(err)}") from err


async def _suspend(ctx: AgentContext, mode: SuspendMode) -> None:
    configured: tuple[str, ...] | None = getattr(ctx.config, f"suspend_{mode.name}_command")
    log.info("guest-suspend-%s called", mode.name)
    if configured is not None:
        result = await _run(ctx, configured, "child process has failed to suspend")
        if result.returncode:
            raise GenericError(
                f"child process has failed to suspend: {_detail(configured, result)}"
            )
        return
    supported = False
    # Each way in turn, as qemu-ga: a supported way that fails hands over to the next.
    failure: GenericError | None = None
    for supports, suspend in (
        (_systemd_supports, _systemd_suspend),
        (_pmutils_supports, _pmutils_suspend),
    ):
        try:
            if not await supports(ctx, mode):
                continue
            supported = True
            await suspend(ctx, mode)
            return
        except GenericError as err:
            failure = err
            log.info("guest-suspend-%s: %s; trying the next way", mode.name, err.desc)
    writes = _sys_state_writes(ctx, mode)
    if writes is None:
        if supported and failure is not None:
            raise failure
        raise GenericError(NOT_SUPPORTED)
    # The write returns when the guest wakes up again, and the kernel syncs every
    # filesystem before it sleeps, a hung one included: in the runner's threads,
    # with no deadline, as qemu-ga waits (an error after one would report a
    # failure for a suspend still under way).
    try:
        await ctx.fs.call(None, partial(_write_sys, writes), limit=math.inf)
    except FsTimeout as err:  # too many calls stuck already
        raise GenericError(f"suspend: {err}") from err


@handlers.command("guest-suspend-disk")
async def guest_suspend_disk(ctx: AgentContext) -> None:
    await _suspend(ctx, DISK)


@handlers.command("guest-suspend-ram")
async def guest_suspend_ram(ctx: AgentContext) -> None:
    await _suspend(ctx, RAM)


@handlers.command("guest-suspend-hybrid")
async def guest_suspend_hybrid(ctx: AgentContext) -> None:
    await _suspend(ctx, HYBRID)


# --- clock ---------------------------------------------------------------------------


@handlers.command("guest-set-time")
async def guest_set_time(ctx: AgentContext, time: int | None) -> dict[str, object]:
    """Set the clock to ``time`` and the RTC from it (``hwclock -w``), or, without
    ``time``, the clock from the RTC (``hwclock -s``), as qemu-ga does."""
    if time is not None:
        if not _plausible(time):
            raise GenericError("Invalid time")
        try:
            ctx.clock.set_time_ns(time)
        except OSError as err:
            raise GenericError(f"Failed to set time to guest: {os_error_text(err)}") from err
    argv = [*ctx.config.hwclock_command, "-w" if time is not None else "-s"]
    result = await _run(ctx, argv, "child process has failed to set hardware clock")
    if result.returncode < 0:
        raise GenericError(f"child process has terminated abnormally: {_detail(argv, result)}")
    if result.returncode:
        raise GenericError(
            "child process has failed to set hardware clock to system time: "
            + _detail(argv, result)
        )
    return {}


def _plausible(time_ns: int) -> bool:
    """qemu-ga refuses a time whose year is not within 1970 to 2069.

    Its seconds are C's division, truncated toward zero (-1 ns is 1970).
    """
    seconds = abs(time_ns) // 1_000_000_000 * (1 if time_ns >= 0 else -1)
    try:
        year = datetime.fromtimestamp(seconds, UTC).year
    except (OverflowError, OSError, ValueError):
        return False
    return 1970 <= year < 2070
