"""The /sys walk behind guest-get-disks and guest-get-fsinfo, on scratch trees.

Each tree is shaped like the kernel's for one controller qemu-ga knows
(qga/commands-linux.c); the addresses must be the ones qemu-ga gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.system.executor import SystemRoot
from agent.system.sysinfo.blockdev import SysBlock
from tests.support.fake_sys import FakeSys


@pytest.fixture
def fake(tmp_path: Path) -> FakeSys:
    return FakeSys(tmp_path / "root")


def address(fake: FakeSys, number: str) -> tuple[str, list[dict[str, Any]]]:
    return SysBlock(SystemRoot(fake.root)).device_disks(f"/sys/dev/block/{number}")


def pci(domain: int, bus: int, slot: int, function: int) -> dict[str, int]:
    return {"domain": domain, "bus": bus, "slot": slot, "function": function}


def test_virtio_blk_on_pci(fake: FakeSys) -> None:
    device = "/sys/devices/pci0000:00/0000:00:02.0"
    fake.driver(device, "virtio-pci")
    fake.disk(f"{device}/virtio1", "vda", "254:0")
    fake.udev("254:0", ID_SERIAL="disk-serial")
    assert address(fake, "254:0") == (
        "vda",
        [
            {
                "pci-controller": pci(0, 0, 2, 0),
                "bus-type": "virtio",
                "bus": 0,
                "target": 0,
                "unit": 0,
                "dev": "/dev/vda",
                "serial": "disk-serial",
            }
        ],
    )


def test_partition_of_a_virtio_scsi_disk_with_udev(fake: FakeSys) -> None:
    device = "/sys/devices/pci0000:00/0000:00:05.0"
    fake.driver(device, "virtio-pci")
    disk = fake.disk(f"{device}/virtio2/host2/target2:0:0/2:0:0:3", "sdb", "8:16")
    fake.partition(disk, "sdb1", "8:17")
    fake.udev("8:17", ID_SERIAL="0QEMU_QEMU_HARDDISK_drive-scsi0-0-0-3")
    name, [found] = address(fake, "8:17")
    assert name == "sdb1"
    assert found == {
        "pci-controller": pci(0, 0, 5, 0),
        "bus-type": "scsi",
        "bus": 0,
        "target": 0,
        "unit": 3,
        "dev": "/dev/sdb1",
        "serial": "0QEMU_QEMU_HARDDISK_drive-scsi0-0-0-3",
    }


def test_ahci_unit_is_the_ata_port_index(fake: FakeSys) -> None:
    device = "/sys/devices/pci0000:00/0000:00:1f.2"
    fake.driver(device, "ahci")
    for port in (1, 2, 3):
        (fake.root / device.lstrip("/") / f"ata{port}").mkdir(parents=True, exist_ok=True)
    fake.disk(f"{device}/ata3/host2/target2:0:0/2:0:0:0", "sdc", "8:32")
    _, [found] = address(fake, "8:32")
    assert (found["bus-type"], found["unit"], found["pci-controller"]) == (
        "sata",
        2,
        pci(0, 0, 31, 2),
    )


def test_ide_bus_is_the_host_index_and_unit_the_target(fake: FakeSys) -> None:
    device = "/sys/devices/pci0000:00/0000:00:01.1"
    fake.driver(device, "ata_piix")
    for port in ("ata1", "ata2"):
        (fake.root / device.lstrip("/") / port).mkdir(parents=True, exist_ok=True)
    fake.disk(f"{device}/ata2/host1/target1:0:1/1:0:1:0", "sdd", "8:48")
    _, [found] = address(fake, "8:48")
    assert (found["bus-type"], found["bus"], found["unit"]) == ("ide", 1, 1)


def test_nvme_behind_a_pci_bridge(fake: FakeSys) -> None:
    bridge = "/sys/devices/pci0000:00/0000:00:1c.0"
    fake.driver(bridge, "pcieport")
    device = f"{bridge}/0000:03:00.0"
    fake.driver(device, "nvme")
    disk = fake.disk(f"{device}/nvme/nvme0", "nvme0n1", "259:0")
    fake.partition(disk, "nvme0n1p1", "259:1")
    _, [found] = address(fake, "259:1")
    assert (found["bus-type"], found["pci-controller"]) == ("nvme", pci(0, 3, 0, 0))


def test_unknown_driver_keeps_the_device_node_only(fake: FakeSys) -> None:
    device = "/sys/devices/pci0000:00/0000:00:07.0"
    fake.driver(device, "mystery")
    fake.disk(device, "sde", "8:64")
    _, [found] = address(fake, "8:64")
    assert found == {
        "pci-controller": pci(-1, -1, -1, -1),
        "bus-type": "unknown",
        "bus": 0,
        "target": 0,
        "unit": 0,
        "dev": "/dev/sde",
    }


def test_ccw_virtio_disk(fake: FakeSys) -> None:
    fake.disk("/sys/devices/css0/0.0.0002/0.0.0007/virtio0", "vdb", "254:16")
    _, [found] = address(fake, "254:16")
    assert found["ccw-address"] == {"cssid": 0, "ssid": 0, "subchno": 2, "devno": 7}
    assert found["bus-type"] == "virtio"


def test_device_mapper_lies_on_its_slaves_disks(fake: FakeSys) -> None:
    for slot, name, number in ((3, "vdc", "254:32"), (4, "vdd", "254:48")):
        device = f"/sys/devices/pci0000:00/0000:00:0{slot}.0"
        fake.driver(device, "virtio-pci")
        fake.disk(f"{device}/virtio{slot}", name, number)
    fake.virtual("dm-0", "253:0", ("/sys/block/vdc", "/sys/block/vdd"))
    name, found = address(fake, "253:0")
    assert name == "dm-0"
    assert [(d["dev"], d["pci-controller"]["slot"]) for d in found] == [
        ("/dev/vdc", 3),
        ("/dev/vdd", 4),
    ]


def test_loop_device_has_no_disk(fake: FakeSys) -> None:
    fake.virtual("loop0", "7:0")
    assert address(fake, "7:0") == ("loop0", [])


def test_missing_device_is_named_by_its_number(fake: FakeSys) -> None:
    assert address(fake, "9:9") == ("9:9", [])
