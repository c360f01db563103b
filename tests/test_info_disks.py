"""guest-get-disks, guest-get-fsinfo and guest-fstrim.

guest-get-disks on a scratch /sys tree (tests/test_info_blockdev.py checks
the addresses); fsinfo and fstrim on the suite's scratch filesystems
(tests/support/scratch.py: ext4 and xfs on loop devices, a tmpfs, a bind mount),
through their mount table, which lists nothing else.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.system.executor import SystemRoot
from agent.system.fsfreeze.ioctl import REFUSED_ENV, check_allowed
from agent.system.mounts import parse_mountinfo
from agent.system.sysinfo.fstrim import TrimRefused, block_mounts
from tests.support.agents import AgentFactory, served
from tests.support.clients import StreamClient
from tests.support.fake_sys import FakeSys
from tests.support.scratch import Scratch


async def test_get_disks_lists_disks_partitions_and_dependencies(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    fake = FakeSys(tmp_path / "root")
    device = "/sys/devices/pci0000:00/0000:00:02.0"
    fake.driver(device, "virtio-pci")
    vda = fake.disk(f"{device}/virtio1", "vda", "254:0")
    fake.partition(vda, "vda1", "254:1")
    fake.partition(vda, "vda2", "254:2")
    fake.virtual("loop7", "7:7")
    (fake.root / "sys/devices/virtual/block/loop7/size").write_text("0\n")
    fake.virtual("dm-0", "253:0", (f"{vda}/vda2",))
    fake.udev("253:0", DM_NAME="vg-root")
    async with served(agent_factory(root=SystemRoot(fake.root))) as client:
        reply = await client.execute("guest-get-disks")
    by_name = {disk["name"]: disk for disk in reply["return"]}
    assert set(by_name) == {"/dev/dm-0", "/dev/vda", "/dev/vda1", "/dev/vda2"}  # loop7 is empty
    assert by_name["/dev/dm-0"] == {
        "name": "/dev/dm-0",
        "partition": False,
        "alias": "vg-root",
        "dependencies": ["/dev/vda2"],
    }
    assert by_name["/dev/vda"]["address"]["bus-type"] == "virtio"
    assert by_name["/dev/vda"]["dependencies"] == []
    assert by_name["/dev/vda1"] == {
        "name": "/dev/vda1",
        "partition": True,
        "dependencies": ["/dev/vda"],
    }


# --------------------------------------------------------- mount table --
MOUNTINFO = b"""\
22 27 0:21 / /proc rw - proc proc rw
27 1 254:0 / / rw - ext4 /dev/vda rw
40 27 7:3 / /mnt/a rw - ext4 /dev/loop3 rw
41 27 7:3 /sub /mnt/bind rw - ext4 /dev/loop3 rw
42 27 0:40 / /mnt/nfs rw - nfs4 server:/x rw
43 27 0:41 / /mnt/tmp rw - tmpfs tmpfs rw
44 27 0:42 / /mnt/btrfs rw - btrfs /nonexistent/dev rw
"""


def test_block_mounts_follow_qemu_ga() -> None:
    chosen = block_mounts(parse_mountinfo(MOUNTINFO))
    # No block device (proc, nfs, tmpfs, a btrfs whose device is gone): left out;
    # the bind mount of loop3: left out, its first mount kept.
    assert [(m.mountpoint, os.major(d), os.minor(d)) for m, d in chosen] == [
        ("/", 254, 0),
        ("/mnt/a", 7, 3),
    ]


# ------------------------------------ the suite's scratch filesystems --
# tests/support/scratch.py: ext4 and xfs (nested) on loop devices, a tmpfs and a bind
# mount of ext4/shared; its mount table lists these four and nothing else.
@pytest.fixture
async def scratch_client(
    scratch: Scratch, agent_factory: AgentFactory
) -> AsyncIterator[StreamClient]:
    async with served(agent_factory(mount_table=str(scratch.mount_table))) as client:
        yield client


def loop_device(mountpoint: Path) -> str:
    return os.path.basename(os.path.realpath(f"/sys/dev/block/{_number(mountpoint)}"))


def _number(path: Path) -> str:
    device = os.stat(path).st_dev
    return f"{os.major(device)}:{os.minor(device)}"


def _fsinfo(mountpoint: Path, fstype: str) -> dict[str, object]:
    usage = os.statvfs(mountpoint)
    used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    return {
        "name": loop_device(mountpoint),
        "mountpoint": str(mountpoint),
        "type": fstype,
        "disk": [],  # a loop device lies on a file, not a disk (qemu-ga gives [] too)
        "used-bytes": used,
        "total-bytes": used + usage.f_bavail * usage.f_frsize,
        "total-bytes-privileged": usage.f_blocks * usage.f_frsize,
    }


async def test_fsinfo_of_the_scratch_filesystems(
    scratch_client: StreamClient, scratch: Scratch
) -> None:
    reply = await scratch_client.execute("guest-get-fsinfo")
    # The tmpfs has no block device and the bind mount is the ext4 device again:
    # both left out; the last mount first, as qemu-ga (which prepends) does.
    assert reply["return"] == [_fsinfo(scratch.xfs, "xfs"), _fsinfo(scratch.ext4, "ext4")]


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _discard_granularity(mountpoint: Path) -> int:
    queue = Path("/sys/block", loop_device(mountpoint), "queue")
    return int((queue / "discard_granularity").read_text())


async def test_fstrim_discards_the_freed_blocks(
    scratch_client: StreamClient, scratch: Scratch
) -> None:
    data = scratch.ext4 / "trim-data"
    data.write_bytes(os.urandom(8 << 20))
    os.sync()
    data.unlink()
    os.sync()
    before = _allocated(scratch.ext4_image)
    reply = await scratch_client.execute("guest-fstrim")
    # The tmpfs and the bind mount left out; the last mount first, as qemu-ga does.
    xfs, ext4 = reply["return"]["paths"]
    assert ext4["path"] == str(scratch.ext4)
    assert ext4["minimum"] == 0
    assert ext4["trimmed"] >= 8 << 20
    # The loop device punched the trimmed ranges out of its image file.
    assert _allocated(scratch.ext4_image) <= before - (8 << 20)
    assert xfs["path"] == str(scratch.xfs)
    # xfs raises the minimum to the device's discard granularity and says so.
    assert xfs["minimum"] == _discard_granularity(scratch.xfs)
    assert xfs["trimmed"] >= 0


async def test_fstrim_passes_the_minimum(scratch_client: StreamClient) -> None:
    reply = await scratch_client.execute("guest-fstrim", {"minimum": 1 << 20})
    results = reply["return"]["paths"]
    assert len(results) == 2
    for result in results:
        assert result["minimum"] == 1 << 20
        assert result["trimmed"] >= 0


@pytest.mark.parametrize(
    ("error", "desc"),
    [
        (OSError(errno.ENOTTY, "Inappropriate ioctl for device"), "trim not supported"),
        (OSError(errno.EOPNOTSUPP, "Operation not supported"), "trim not supported"),
        (OSError(errno.EIO, "Input/output error"), "failed to trim: Input/output error"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"),
            "failed to open: No such file or directory",
        ),
    ],
)
async def test_fstrim_errors_in_qemu_ga_words(
    scratch: Scratch, agent_factory: AgentFactory, error: OSError, desc: str
) -> None:
    def fail(mountpoint: str, minimum: int) -> tuple[int, int]:
        raise error

    agent = agent_factory(mount_table=str(scratch.mount_table), trim=fail)
    async with served(agent) as client:
        reply = await client.execute("guest-fstrim")
    assert reply["return"]["paths"] == [
        {"path": str(scratch.xfs), "error": desc},
        {"path": str(scratch.ext4), "error": desc},
    ]


def test_trim_guard_refuses_what_it_does_not_list(
    scratch: Scratch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guard alone, without the ioctl: it must never be tried on a real filesystem.
    refused = tmp_path / "refused"
    monkeypatch.setenv(REFUSED_ENV, str(refused))
    for path in (Path("/"), tmp_path):
        with pytest.raises(TrimRefused, match=f"FITRIM on {path} refused"):
            check_allowed(str(path), os.stat(path).st_dev, "FITRIM", TrimRefused)
    assert refused.read_text().split() == ["/", str(tmp_path)]
    for mountpoint in scratch.freezable:
        check_allowed(str(mountpoint), os.stat(mountpoint).st_dev, "FITRIM", TrimRefused)


async def test_fsinfo_mount_table_error(agent_factory: AgentFactory, tmp_path: Path) -> None:
    async with served(agent_factory(mount_table=str(tmp_path / "missing"))) as client:
        for name in ("guest-get-fsinfo", "guest-fstrim"):
            reply = await client.execute(name)
            assert reply["error"]["class"] == "GenericError"
            assert "missing" in reply["error"]["desc"]
