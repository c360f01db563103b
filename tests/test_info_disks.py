"""guest-get-disks, guest-get-fsinfo and guest-fstrim.

guest-get-disks on a scratch /sys tree (tests/test_info_blockdev.py checks
the addresses); fsinfo and fstrim on an ext4 image mounted on a loop device by
this module, through a mount table that lists nothing else.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.fsfreeze.ioctl import ALLOW_ENV, REFUSED_ENV, check_allowed
from agent.fsfreeze.mounts import parse_mountinfo
from agent.sysinfo.fstrim import TrimRefused, block_mounts
from agent.system import SystemRoot
from tests.agents import AgentFactory, served
from tests.qga_client import StreamClient
from tests.test_info_blockdev import FakeSys


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


# ----------------------------------------------- scratch ext4 on a loop --
@dataclass(frozen=True)
class Scratch:
    image: Path
    mountpoint: Path
    bind: Path  # a bind mount of a directory of the same filesystem
    mount_table: Path  # mountinfo lines of these two mounts, nothing else


@pytest.fixture(scope="module")
def scratch_ext4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a loop device")
    base = tmp_path_factory.mktemp("trim-scratch")
    scratch = Scratch(base / "fs.img", base / "mnt", base / "bind", base / "mountinfo")
    subprocess.run(["truncate", "-s", "48M", str(scratch.image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(scratch.image)], check=True)
    scratch.mountpoint.mkdir()
    scratch.bind.mkdir()
    mounted: list[Path] = []
    saved = os.environ.get(ALLOW_ENV)
    try:
        subprocess.run(
            ["mount", "-o", "loop", str(scratch.image), str(scratch.mountpoint)], check=True
        )
        mounted.append(scratch.mountpoint)
        (scratch.mountpoint / "dir").mkdir()
        subprocess.run(
            ["mount", "--bind", str(scratch.mountpoint / "dir"), str(scratch.bind)], check=True
        )
        mounted.append(scratch.bind)
        ours = {str(scratch.mountpoint), str(scratch.bind)}
        lines = Path("/proc/self/mountinfo").read_text().splitlines(keepends=True)
        scratch.mount_table.write_text("".join(line for line in lines if line.split()[4] in ours))
        # The trim guard (agent/sysinfo/fstrim.py) allows these two and nothing else.
        os.environ[ALLOW_ENV] = os.pathsep.join(filter(None, [saved, *sorted(ours)]))
        yield scratch
    finally:
        if saved is None:
            os.environ.pop(ALLOW_ENV, None)
        else:
            os.environ[ALLOW_ENV] = saved
        for mountpoint in reversed(mounted):
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        scratch.image.unlink(missing_ok=True)


@pytest.fixture
async def scratch_client(
    scratch_ext4: Scratch, agent_factory: AgentFactory
) -> AsyncIterator[StreamClient]:
    async with served(agent_factory(mount_table=str(scratch_ext4.mount_table))) as client:
        yield client


def loop_device(mountpoint: Path) -> str:
    return os.path.basename(os.path.realpath(f"/sys/dev/block/{_number(mountpoint)}"))


def _number(path: Path) -> str:
    device = os.stat(path).st_dev
    return f"{os.major(device)}:{os.minor(device)}"


async def test_fsinfo_of_the_scratch_filesystem(
    scratch_client: StreamClient, scratch_ext4: Scratch
) -> None:
    reply = await scratch_client.execute("guest-get-fsinfo")
    [info] = reply["return"]  # the bind mount is the same device: listed once
    usage = os.statvfs(scratch_ext4.mountpoint)
    used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    assert info == {
        "name": loop_device(scratch_ext4.mountpoint),
        "mountpoint": str(scratch_ext4.mountpoint),
        "type": "ext4",
        "disk": [],  # a loop device lies on a file, not a disk (qemu-ga gives [] too)
        "used-bytes": used,
        "total-bytes": used + usage.f_bavail * usage.f_frsize,
        "total-bytes-privileged": usage.f_blocks * usage.f_frsize,
    }


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


async def test_fstrim_discards_the_freed_blocks(
    scratch_client: StreamClient, scratch_ext4: Scratch
) -> None:
    data = scratch_ext4.mountpoint / "data"
    data.write_bytes(os.urandom(8 << 20))
    os.sync()
    data.unlink()
    os.sync()
    before = _allocated(scratch_ext4.image)
    reply = await scratch_client.execute("guest-fstrim")
    [result] = reply["return"]["paths"]
    assert result["path"] == str(scratch_ext4.mountpoint)
    assert result["minimum"] == 0
    assert result["trimmed"] >= 8 << 20
    # The loop device punched the trimmed ranges out of its image file.
    assert _allocated(scratch_ext4.image) <= before - (8 << 20)


async def test_fstrim_passes_the_minimum(scratch_client: StreamClient) -> None:
    reply = await scratch_client.execute("guest-fstrim", {"minimum": 1 << 20})
    [result] = reply["return"]["paths"]
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
    scratch_ext4: Scratch, agent_factory: AgentFactory, error: OSError, desc: str
) -> None:
    def fail(mountpoint: str, minimum: int) -> tuple[int, int]:
        raise error

    agent = agent_factory(mount_table=str(scratch_ext4.mount_table), trim=fail)
    async with served(agent) as client:
        reply = await client.execute("guest-fstrim")
    [result] = reply["return"]["paths"]
    assert set(result) == {"path", "error"}
    assert result["error"] == desc


def test_trim_guard_refuses_what_it_does_not_list(
    scratch_ext4: Scratch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guard alone, without the ioctl: it must never be tried on a real filesystem.
    refused = tmp_path / "refused"
    monkeypatch.setenv(REFUSED_ENV, str(refused))
    for path in (Path("/"), tmp_path):
        with pytest.raises(TrimRefused, match=f"FITRIM on {path} refused"):
            check_allowed(str(path), os.stat(path).st_dev, "FITRIM", TrimRefused)
    assert refused.read_text().split() == ["/", str(tmp_path)]
    mountpoint = str(scratch_ext4.mountpoint)
    check_allowed(mountpoint, os.stat(mountpoint).st_dev, "FITRIM", TrimRefused)


async def test_fsinfo_mount_table_error(agent_factory: AgentFactory, tmp_path: Path) -> None:
    async with served(agent_factory(mount_table=str(tmp_path / "missing"))) as client:
        for name in ("guest-get-fsinfo", "guest-fstrim"):
            reply = await client.execute(name)
            assert reply["error"]["class"] == "GenericError"
            assert "missing" in reply["error"]["desc"]
