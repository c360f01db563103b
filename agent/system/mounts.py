"""The mount table, and which of its filesystems a freeze covers, in which order.

The table is read from a file in ``/proc/self/mountinfo`` format (the kernel's
own, see proc(5)); its path is configurable so that tests hand the agent a
table that lists only their scratch filesystems.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

# Filesystems that cannot take writes anyway: freezing them protects nothing.
READ_ONLY_TYPES = frozenset({"squashfs", "iso9660", "erofs", "cramfs", "romfs"})
# Network filesystems; most have no block device (major 0) and are skipped for
# that reason already, these are named so that none slips through.
NETWORK_TYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smbfs", "smb3", "ceph", "glusterfs", "9p", "afs", "virtiofs"}
)

_ESCAPE = re.compile(rb"\\([0-7]{3})")


class MountTableError(Exception):
    """The mount table cannot be read."""


class Mount(NamedTuple):
    """One line of the mount table."""

    mountpoint: str
    device: int  # st_dev of the filesystem (os.makedev(major, minor))
    fstype: str
    source: str
    root: str  # the directory of the filesystem mounted here: "/" unless a bind mount

    @property
    def freezable(self) -> bool:
        """A local filesystem on a block device that takes writes (qemu-ga's rule,
        which also keeps btrfs: its mounts show an anonymous device, major 0)."""
        if self.fstype in READ_ONLY_TYPES or self.fstype in NETWORK_TYPES:
            return False
        if os.major(self.device) == 0:
            return self.fstype == "btrfs" and self.source.startswith("/")
        return True

    @property
    def depth(self) -> int:
        return len([part for part in self.mountpoint.split("/") if part])


def _unescape(field: bytes) -> str:
    """Undo the kernel's octal escapes (space, tab, newline, backslash)."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_mountinfo(data: bytes) -> list[Mount]:
    """The mounts of a mountinfo file, in its order; malformed lines are skipped.

    A line is ``id parent major:minor root mountpoint options [tags...] - type
    source superoptions``; the optional tags end at the lone ``-``.
    """
    mounts = []
    for line in data.splitlines():
        fields = line.split()
        try:
            separator = fields.index(b"-", 6)
            major, minor = (int(number) for number in fields[2].split(b":"))
            fstype, source = fields[separator + 1], fields[separator + 2]
        except (ValueError, IndexError):
            continue
        mounts.append(
            Mount(
                mountpoint=_unescape(fields[4]),
                device=os.makedev(major, minor),
                fstype=_unescape(fstype),
                source=_unescape(source),
                root=_unescape(fields[3]),
            )
        )
    return mounts


def read_mount_table(path: str) -> list[Mount]:
    try:
        with open(path, "rb") as table:
            return parse_mountinfo(table.read())
    except OSError as err:
        raise MountTableError(f"failed to read mount table '{path}': {err.strerror}") from err


def visible(mounts: Iterable[Mount]) -> dict[str, Mount]:
    """The mount reachable at each mountpoint: a later mount on the same path hides
    the earlier one, which cannot be opened (and so cannot be frozen) by path."""
    return {mount.mountpoint: mount for mount in mounts}


def freeze_plan(mounts: Sequence[Mount], mountpoints: Sequence[str] | None) -> list[Mount]:
    """What a freeze covers, children before parents, one mount per device.

    ``mountpoints`` None means every freezable filesystem. Of given ones, those
    no freeze can cover are left out (see :func:`unfreezable`): the schema says
    "Invalid mount points are ignored", and qemu-ga ignores them. Deepest
    mountpoints come first: a filesystem is frozen before the one it is mounted
    on (and whose image file it may live in).
    """
    by_path = visible(mounts)
    if mountpoints is None:
        chosen = [mount for mount in by_path.values() if mount.freezable]
        # Of two mounts of one device, keep the filesystem's own (root "/") one.
        chosen.sort(key=lambda mount: mount.root != "/")
    else:
        chosen = [
            by_path[os.path.normpath(path)]
            for path in mountpoints
            if _why_not(by_path, path) is None
        ]
    order = {mount.mountpoint: index for index, mount in enumerate(by_path.values())}
    plan: dict[int, Mount] = {}
    for mount in chosen:
        plan.setdefault(mount.device, mount)
    return sorted(plan.values(), key=lambda m: (m.depth, order[m.mountpoint]), reverse=True)


def unfreezable(mounts: Sequence[Mount], mountpoints: Sequence[str]) -> dict[str, str]:
    """The given mountpoints no freeze can cover, each with the reason why."""
    by_path = visible(mounts)
    return {path: reason for path in mountpoints if (reason := _why_not(by_path, path))}


def _why_not(by_path: dict[str, Mount], path: str) -> str | None:
    mount = by_path.get(os.path.normpath(path)) if path.startswith("/") else None
    if mount is None:
        return "not a mounted filesystem"
    if not mount.freezable:
        return f"a {mount.fstype} filesystem, which cannot be frozen"
    return None
