"""FITRIM, the kernel call behind guest-fstrim, and the mounts qemu-ga trims.

Safety net for test machines: when ``TRIO_QGA_FREEZE_ALLOW`` is set (the
fsfreeze guard's list of scratch mountpoints, see ``agent.system.fsfreeze.ioctl``),
FITRIM is refused on any other path and on the root filesystem's device, and
the refusal is logged to ``TRIO_QGA_FREEZE_REFUSED`` for the test harness.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterable

from agent.system.fsfreeze.ioctl import check_allowed
from agent.system.mounts import Mount

# linux/fs.h: _IOWR('X', 121, struct fstrim_range { u64 start, len, minlen; }).
FITRIM = 0xC0185879
_RANGE = struct.Struct("=QQQ")
_U64 = (1 << 64) - 1


class TrimRefused(PermissionError):
    """FITRIM on a path the test guard does not allow."""


# The trim call, replaceable in tests: (mountpoint, minimum) -> (trimmed, minimum).
Trim = Callable[[str, int], tuple[int, int]]


def fitrim(mountpoint: str, minimum: int) -> tuple[int, int]:
    """Trim the free space of the filesystem at ``mountpoint`` in extents of at
    least ``minimum`` bytes; returns (bytes trimmed, minimum the kernel used).
    Blocks while the filesystem discards: call it in a worker thread."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_CLOEXEC)
    try:
        check_allowed(mountpoint, os.fstat(fd).st_dev, "FITRIM", TrimRefused)
        request = bytearray(_RANGE.pack(0, _U64, minimum & _U64))
        fcntl.ioctl(fd, FITRIM, request)
    finally:
        os.close(fd)
    _, trimmed, used_minimum = _RANGE.unpack(request)
    return trimmed, used_minimum - (1 << 64) if used_minimum >> 63 else used_minimum


def block_mounts(mounts: Iterable[Mount]) -> list[tuple[Mount, int]]:
    """The mounts guest-get-fsinfo and guest-fstrim cover, with their block
    device numbers, in mount-table order: qemu-ga's build_fs_mount_list().

    Filesystems without a block device (major 0: proc, tmpfs, NFS, ...) are
    left out, except btrfs, whose device is found from its source; of several
    mounts of one device (bind mounts) the first is kept.
    """
    chosen: list[tuple[Mount, int]] = []
    seen: set[int] = set()
    for mount in mounts:
        device = mount.device
        if os.major(device) == 0:
            if mount.fstype != "btrfs":
                continue
            try:
                status = os.stat(mount.source)
            except OSError:
                continue
            if not stat.S_ISBLK(status.st_mode):
                continue
            device = status.st_rdev
        if device in seen:
            continue
        seen.add(device)
        chosen.append((mount, device))
    return chosen
