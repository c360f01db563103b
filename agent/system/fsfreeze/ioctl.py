"""FIFREEZE and FITHAW: the kernel calls behind the freezer, as an injectable seam.

:class:`LinuxIoctls` is the real seam the freezer talks to (its interface,
``FreezeIoctls``, is the freezer's). This module imports the standard
library only, and not even ``typing``: the watchdog process loads it by path,
without importing the agent package, and its start is paid by the first
freeze.

Safety net: when ``TRIO_QGA_FREEZE_ALLOW`` is set (mountpoints separated by
``os.pathsep``; empty allows none), FIFREEZE is refused on any path that is
not listed, not a mountpoint, or on the root filesystem's device. A refusal
is also appended to the file named by ``TRIO_QGA_FREEZE_REFUSED`` when set,
so that a test harness can fail the test that caused it. The test suite sets
both for every test and every agent process it starts.
"""

from __future__ import annotations

import errno
import fcntl
import os

# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

ALLOW_ENV = "TRIO_QGA_FREEZE_ALLOW"
REFUSED_ENV = "TRIO_QGA_FREEZE_REFUSED"

# FITHAW undoes one FIFREEZE; qemu-ga repeats it until it fails, in case a
# filesystem was frozen more than once. A bound keeps a misbehaving driver
# from spinning us forever.
MAX_THAWS = 16


class FreezeRefused(PermissionError):
    """FIFREEZE on a path that ``TRIO_QGA_FREEZE_ALLOW`` does not allow."""


class StaleMount(OSError):
    """The path no longer holds the filesystem the mount table listed."""


class LinuxIoctls:
    """The real calls, on a descriptor opened read-only on the mountpoint."""

    def freeze(self, mountpoint: str, device: int | None) -> bool:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_CLOEXEC)
        try:
            found = os.fstat(fd).st_dev
            if device is not None and found != device:
                raise StaleMount(
                    errno.ESTALE,
                    f"mount table lists device {_dev(device)} at {mountpoint}, found {_dev(found)}",
                )
            check_allowed(mountpoint, found)
            try:
                fcntl.ioctl(fd, FIFREEZE, 0)
            except OSError as err:
                if err.errno in (errno.EOPNOTSUPP, errno.EBUSY):
                    return False
                raise
            return True
        finally:
            os.close(fd)

    def thaw(self, mountpoint: str) -> bool:
        return thaw_mountpoint(mountpoint)


def thaw_mountpoint(mountpoint: str) -> bool:
    """FITHAW until the kernel says the filesystem is not frozen; True if it was."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for count in range(MAX_THAWS):
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError as err:
                if count == 0 and err.errno != errno.EINVAL:  # EINVAL: not frozen
                    raise
                return count > 0
        return True
    finally:
        os.close(fd)


def _dev(device: int) -> str:
    return f"{os.major(device)}:{os.minor(device)}"


def check_allowed(
    mountpoint: str,
    device: int,
    operation: str = "FIFREEZE",
    refusal: type[PermissionError] = FreezeRefused,
) -> None:
    """The test guard, for FIFREEZE and for FITRIM (guest-fstrim) alike."""
    allowed = os.environ.get(ALLOW_ENV)
    if allowed is None:
        return
    path = os.path.realpath(mountpoint)
    # Not realpath() on the entries: one of them may be a hung mount (a test's FUSE).
    listed = {os.path.abspath(entry) for entry in allowed.split(os.pathsep) if entry}
    named = path in listed or os.path.abspath(mountpoint) in listed
    if named and os.path.ismount(path) and device != os.stat("/").st_dev:
        return
    refused_log = os.environ.get(REFUSED_ENV)
    if refused_log:
        with open(refused_log, "a") as log:
            log.write(f"{mountpoint}\n")
    raise refusal(errno.EPERM, f"{operation} on {mountpoint} refused: it is not in {ALLOW_ENV}")
