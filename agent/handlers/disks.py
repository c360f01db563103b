"""Disks and filesystems: guest-get-disks, guest-get-fsinfo and guest-fstrim.

The mount table comes from ``ctx.config.mount_table`` (the kernel's
/proc/self/mountinfo by default; tests list only their scratch filesystems),
/sys is read through ``ctx.root``. All of it runs in the runner's threads
(``ctx.fs``, ``agent.system.fsguard``) under the ``--fs-timeout`` deadline: /sys
walks read many files, statvfs and FITRIM can take long, and on a hung mount
never return. guest-get-fsinfo lists a mount that did not answer without its
figures, guest-fstrim gives it an error entry, and both go on with the rest.
"""

from __future__ import annotations

import errno
import logging
import os
from functools import partial
from typing import Any

import trio

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError
from agent.system.fsguard import FsTimeout
from agent.system.mounts import Mount, MountTableError, read_mount_table
from agent.system.sysinfo import fstrim
from agent.system.sysinfo.blockdev import DiskListError, SysBlock, sys_dev_block

handlers = HandlerSet()
log = logging.getLogger(__name__)


@handlers.command("guest-get-disks")
async def guest_get_disks(ctx: AgentContext) -> list[dict[str, Any]]:
    """/sys only: no mount is touched. The walk has the deadline all the same."""
    try:
        return await ctx.fs.call(None, SysBlock(ctx.root).disks)
    except (DiskListError, FsTimeout) as err:
        raise GenericError(str(err)) from err


async def _mounts(ctx: AgentContext) -> list[tuple[Mount, int]]:
    """The block-device mounts of the mount table, with their devices."""
    try:
        table = await ctx.fs.call(None, partial(read_mount_table, ctx.config.mount_table))
    except (MountTableError, FsTimeout) as err:
        raise GenericError(str(err)) from err
    return fstrim.block_mounts(table)


@handlers.command("guest-get-fsinfo")
async def guest_get_fsinfo(ctx: AgentContext) -> list[dict[str, Any]]:
    mounts = await _mounts(ctx)
    try:
        filesystems = await ctx.fs.call(None, partial(_describe, SysBlock(ctx.root), mounts))
    except FsTimeout as err:
        raise GenericError(f"/sys: {err}") from err
    async with trio.open_nursery() as nursery:  # at once: a hung mount costs one deadline
        for info in filesystems:
            nursery.start_soon(_add_usage, ctx, info)
    # qemu-ga builds its list by prepending: the last mount comes first.
    filesystems.reverse()
    return filesystems


def _describe(sysblock: SysBlock, mounts: list[tuple[Mount, int]]) -> list[dict[str, Any]]:
    """Each mount's name, type and disks, from the mount table and /sys alone."""
    filesystems = []
    for mount, device in mounts:
        name, disks = sysblock.device_disks(sys_dev_block(device))
        filesystems.append(
            {"name": name, "mountpoint": mount.mountpoint, "type": mount.fstype, "disk": disks}
        )
    return filesystems


async def _add_usage(ctx: AgentContext, info: dict[str, Any]) -> None:
    """``used-bytes``, ``total-bytes`` and ``total-bytes-privileged``, when statvfs
    answers in time."""
    mountpoint = info["mountpoint"]
    try:
        usage = await ctx.fs.call(mountpoint, partial(os.statvfs, mountpoint))
    except OSError:
        return
    except FsTimeout as err:
        log.warning("guest-get-fsinfo: %s: listed without its sizes", err)
        return
    used = usage.f_blocks - usage.f_bfree
    # As df: the total a non-root user can reach (what is used plus what is available).
    info["used-bytes"] = used * usage.f_frsize
    info["total-bytes"] = (used + usage.f_bavail) * usage.f_frsize
    info["total-bytes-privileged"] = usage.f_blocks * usage.f_frsize


# Discarding the free space of a big filesystem takes minutes on some disks.
TRIM_TIMEOUT = 300.0


@handlers.command("guest-fstrim")
async def guest_fstrim(ctx: AgentContext, minimum: int | None) -> dict[str, Any]:
    """One filesystem after the other, as qemu-ga (a trim is heavy I/O).

    The mount must answer a statvfs within the deadline (a hung one gets an
    error entry at that cost); the trim itself may take up to TRIM_TIMEOUT
    (or the deadline, if longer), past which it is reported as an error and
    goes on in the kernel.
    """
    paths = []
    for mount, _ in await _mounts(ctx):
        result: dict[str, Any] = {"path": mount.mountpoint}
        try:
            await ctx.fs.call(mount.mountpoint, partial(os.statvfs, mount.mountpoint))
            trimmed, used_minimum = await ctx.fs.call(
                mount.mountpoint,
                partial(ctx.trim, mount.mountpoint, minimum or 0),
                limit=max(ctx.fs.timeout, TRIM_TIMEOUT),
            )
        except OSError as err:
            result["error"] = _trim_error(err)
        except FsTimeout as err:
            result["error"] = f"failed to trim: {err}"
        else:
            result["trimmed"] = trimmed
            result["minimum"] = used_minimum
        paths.append(result)
    paths.reverse()  # qemu-ga's order, as for fsinfo
    return {"paths": paths}


def _trim_error(err: OSError) -> str:
    """qemu-ga's words: open failures, unsupported filesystems, other errors."""
    if err.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
        return "trim not supported"
    text = os.strerror(err.errno) if err.errno else str(err)
    if isinstance(err, fstrim.TrimRefused):
        return f"failed to trim: {err.strerror}"
    if err.filename is not None:  # os.open() on the mountpoint failed
        return f"failed to open: {text}"
    return f"failed to trim: {text}"
