"""The mount table (``agent/system/mounts.py``): parsing mountinfo, which
filesystems a freeze covers and in which order."""

from __future__ import annotations

import os

import pytest

from agent.system.mounts import Mount, freeze_plan, parse_mountinfo, unfreezable
from tests.support.fsfreeze_fakes import (
    FAKE,
    FAKE_FREEZE_ORDER,
    FAKE_TABLE,
    mountinfo_line,
)


def test_mountinfo_fields_escapes_and_optional_tags() -> None:
    data = (
        b"36 35 98:0 /mnt1 /with\\040space\\134x rw,noatime master:1 shared:2 - ext3 /dev/root rw\n"
        b"garbage line\n"
        b"37 35 0:21 / /proc rw - proc proc rw\n"
    )
    [mount, proc] = parse_mountinfo(data)
    assert mount == Mount(
        mountpoint="/with space\\x",
        device=os.makedev(98, 0),
        fstype="ext3",
        source="/dev/root",
        root="/mnt1",
    )
    assert mount.freezable
    assert not proc.freezable


@pytest.mark.parametrize(
    ("device", "fstype", "source", "freezable"),
    [
        ("8:1", "ext4", "/dev/sda1", True),
        ("253:0", "xfs", "/dev/mapper/vg-root", True),
        ("0:45", "btrfs", "/dev/vda2", True),  # btrfs: anonymous device, real source
        ("0:21", "proc", "proc", False),
        ("0:25", "tmpfs", "tmpfs", False),
        ("0:50", "nfs4", "server:/export", False),
        ("0:51", "fuse.sshfs", "user@host:", False),
        ("7:3", "squashfs", "/dev/loop3", False),  # read-only by nature
        ("11:0", "iso9660", "/dev/sr0", False),
    ],
)
def test_which_filesystems_a_freeze_covers(
    device: str, fstype: str, source: str, freezable: bool
) -> None:
    [mount] = parse_mountinfo(mountinfo_line(1, "/m", device, fstype, source).encode())
    assert mount.freezable is freezable


def test_plan_is_children_first_one_per_device_without_pseudo_or_network() -> None:
    plan = freeze_plan(parse_mountinfo(FAKE_TABLE.encode()), None)
    assert [mount.mountpoint for mount in plan] == FAKE_FREEZE_ORDER


def test_plan_skips_a_mount_hidden_by_a_later_one_on_the_same_path() -> None:
    table = mountinfo_line(1, "/m", "8:1", "ext4", "/dev/sda1") + mountinfo_line(
        2, "/m", "8:2", "ext4", "/dev/sda2"
    )
    [mount] = freeze_plan(parse_mountinfo(table.encode()), None)
    assert mount.device == os.makedev(8, 2)


def test_plan_for_a_list_checks_each_mountpoint() -> None:
    mounts = parse_mountinfo(FAKE_TABLE.encode())
    plan = freeze_plan(mounts, [FAKE, f"{FAKE}/data/deep/er/", f"{FAKE}/srv"])
    # Sorted children first; /srv is the device of FAKE again: frozen once.
    assert [m.mountpoint for m in plan] == [f"{FAKE}/data/deep/er", FAKE]
    # What no freeze can cover is left out, each with its reason for the log.
    invalid = [f"{FAKE}/data/deep", "relative/path", f"{FAKE}/run"]
    assert [m.mountpoint for m in freeze_plan(mounts, [*invalid, FAKE])] == [FAKE]
    assert freeze_plan(mounts, invalid) == []
    assert unfreezable(mounts, [*invalid, FAKE]) == {
        f"{FAKE}/data/deep": "not a mounted filesystem",
        "relative/path": "not a mounted filesystem",
        f"{FAKE}/run": "a tmpfs filesystem, which cannot be frozen",
    }
    assert freeze_plan(mounts, []) == []
