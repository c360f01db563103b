"""Disks and filesystems: guest-get-disks, guest-get-fsinfo and guest-fstrim.

The mount table comes from ``ctx.config.mount_table`` (the kernel's
/proc/self/mountinfo by default; tests list only their scratch filesystems),
/sys is read through ``ctx.root``. All of it runs in worker threads: /sys
walks read many files, statvfs and FITRIM can take long.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import trio

from agent.context import AgentContext
from agent.errors import GenericError
from agent.fsfreeze.mounts import Mount, MountTableError, read_mount_table
from agent.registry import HandlerSet
from agent.sysinfo import fstrim
from agent.sysinfo.blockdev import DiskListError, SysBlock, sys_dev_block

handlers = HandlerSet()


@handlers.command("guest-get-disks")
async def guest_get_disks(ctx: AgentContext) -> list[dict[str, Any]]:
    try:
        return await trio.to_thread.run_sync(SysBlock(ctx.root).disks)
    except DiskListError as err:
        raise GenericError(str(err)) from err


def _mounts(ctx: AgentContext) -> list[tuple[Mount, int]]:
    try:
        return fstrim.block_mounts(read_mount_table(ctx.config.mount_table))
    except MountTableError as err:
        raise GenericError(str(err)) from err


@handlers.command("guest-get-fsinfo")
async def guest_get_fsinfo(ctx: AgentContext) -> list[dict[str, Any]]:
    return await trio.to_thread.run_sync(_fsinfo, ctx)


def _fsinfo(ctx: AgentContext) -> list[dict[str, Any]]:
    sysblock = SysBlock(ctx.root)
    filesystems = []
    for mount, device in _mounts(ctx):
        name, disks = sysblock.device_disks(sys_dev_block(device))
        info: dict[str, Any] = {
            "name": name,
            "mountpoint": mount.mountpoint,
            "type": mount.fstype,
            "disk": disks,
        }
        try:
            usage = os.statvfs(mount.mountpoint)
        except OSError:
            pass
        else:
            used = usage.f_blocks - usage.f_bfree
            # As df: the total a non-root user can reach (what is used plus what is available).
            info["used-bytes"] = used * usage.f_frsize
            info["total-bytes"] = (used + usage.f_bavail) * usage.f_frsize
            info["total-bytes-privileged"] = usage.f_blocks * usage.f_frsize
        filesystems.append(info)
    # qemu-ga builds its list by prepending: the last mount comes first.
    filesystems.reverse()
    return filesystems


# The trim call, replaceable in tests: (mountpoint, minimum) -> (trimmed, minimum).
Trim = Callable[[str, int], tuple[int, int]]
trim_filesystem: Trim = fstrim.fitrim


@handlers.command("guest-fstrim")
async def guest_fstrim(ctx: AgentContext, minimum: int | None) -> dict[str, Any]:
    return await trio.to_thread.run_sync(_fstrim, ctx, minimum or 0)


def _fstrim(ctx: AgentContext, minimum: int) -> dict[str, Any]:
    paths = []
    for mount, _ in _mounts(ctx):
        result: dict[str, Any] = {"path": mount.mountpoint}
        try:
            trimmed, used_minimum = trim_filesystem(mount.mountpoint, minimum)
        except OSError as err:
            result["error"] = _trim_error(err)
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
