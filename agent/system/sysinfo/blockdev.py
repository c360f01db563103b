"""Block devices as /sys describes them: names, disk addresses, partitions.

This follows qemu-ga's walk (qga/commands-linux.c: build_guest_fsinfo_for_device,
build_guest_fsinfo_for_pci_dev, qmp_guest_get_disks) step by step, so that a
host sees the same PCI controller, bus type and bus/target/unit for a disk.
Where qemu-ga asks libudev, this reads what libudev itself reads: the device
node from the ``uevent`` file's DEVNAME, and properties (ID_SERIAL, DM_NAME)
from udev's database in /run/udev/data. Every path goes through a
:class:`SystemRoot`, so the walk is tested on scratch trees.

Blocking file I/O throughout: callers run it in a worker thread.
"""

from __future__ import annotations

import os
import re
from typing import Any

from agent.system.executor import SystemRoot

# PCI drivers of the disk controllers qemu-ga recognises, as the /sys "driver" link names them.
PCI_DRIVERS = frozenset(
    {"ata_piix", "sym53c8xx", "virtio-pci", "ahci", "nvme", "xhci_hcd", "ehci-pci"}
)

_HEX = "[0-9a-fA-F]+"
_PCI_ROOT = re.compile(rf"{_HEX}:{_HEX}/({_HEX}):({_HEX}):({_HEX})\.({_HEX})")
_PCI_STEP = re.compile(rf"/({_HEX}):({_HEX}):({_HEX})\.({_HEX})")
_TARGET = re.compile(r"\d+:\d+:\d+/\d+:(\d+):(\d+):(\d+)")
_CCW = re.compile(rf"{_HEX}/({_HEX})\.({_HEX})\.({_HEX})/{_HEX}\.{_HEX}\.({_HEX})/")
_LEADING_NUMBER = re.compile(r"\d+")

Address = dict[str, Any]


class SysBlock:
    """Reads block device information under one system root."""

    def __init__(self, root: SystemRoot) -> None:
        self.root = root
        self._base = os.path.realpath(root.root)

    # -- files ------------------------------------------------------------
    def _read(self, path: str) -> str | None:
        try:
            return self.root.path(path).read_text(errors="replace")
        except OSError:
            return None

    def realpath(self, path: str) -> str | None:
        """``path`` with its links resolved, as a path under the root; None if it
        does not exist."""
        real = os.path.realpath(self.root.path(path))
        if not os.path.exists(real):
            return None
        if self._base == "/":
            return real
        relative = os.path.relpath(real, self._base)
        return real if relative.startswith("..") else "/" + relative

    def devnode(self, syspath: str) -> str | None:
        """The device node of a /sys device, as libudev gives it (/dev/ + DEVNAME)."""
        uevent = self._read(f"{syspath}/uevent") or ""
        for line in uevent.splitlines():
            key, _, value = line.partition("=")
            if key == "DEVNAME" and value:
                return value if value.startswith("/") else f"/dev/{value}"
        return None

    def udev_properties(self, syspath: str) -> dict[str, str]:
        """The E: properties udev recorded for a block device (empty without udev)."""
        number = (self._read(f"{syspath}/dev") or "").strip()
        if not number:
            return {}
        data = self._read(f"/run/udev/data/b{number}") or ""
        properties = {}
        for line in data.splitlines():
            if line.startswith("E:"):
                key, _, value = line[2:].partition("=")
                properties[key] = value
        return properties

    def is_virtual(self, syspath: str) -> bool:
        return "/devices/virtual/block/" in syspath

    # -- filesystems ---------------------------------------------------------
    def device_disks(self, devpath: str) -> tuple[str, list[Address]]:
        """The name of the block device at ``devpath`` (e.g. /sys/dev/block/8:1)
        and the disks it lies on: its own address for a real device, its slaves'
        for a virtual one (device-mapper, md), none for one without either."""
        disks: list[Address] = []
        syspath = self.realpath(devpath)
        if syspath is None:
            # Not in this /sys (a container's view, say): qemu-ga names it by the link.
            return os.path.basename(devpath), disks
        self._collect(syspath, disks, depth=0)
        return os.path.basename(syspath), disks

    def _collect(self, syspath: str, disks: list[Address], depth: int) -> None:
        if depth > 16:  # slaves form a tree; a loop in a scratch tree must not hang us
            return
        if not self.is_virtual(syspath):
            address = self.real_device_address(syspath)
            if address is not None:
                disks.append(address)
            return
        slaves = self.root.path(f"{syspath}/slaves")
        try:
            entries = sorted(os.listdir(slaves))
        except OSError:
            return
        for entry in entries:
            if (slaves / entry).is_symlink():
                child = self.realpath(f"{syspath}/slaves/{entry}")
                if child is not None:
                    self._collect(child, disks, depth + 1)

    # -- disk addresses ------------------------------------------------------
    def real_device_address(self, syspath: str) -> Address | None:
        """A GuestDiskAddress for a non-virtual block device; None when neither
        the bus nor the device node nor a serial number is known (as qemu-ga)."""
        disk: Address = {
            "pci-controller": {"domain": -1, "bus": -1, "slot": -1, "function": -1},
            "bus-type": "unknown",
            "bus": 0,
            "target": 0,
            "unit": 0,
        }
        devnode = self.devnode(syspath)
        if devnode is not None:
            disk["dev"] = devnode
        serial = self.serial(syspath)
        if serial:
            disk["serial"] = serial
        if "/devices/pci" in syspath:
            found = self._pci_device(syspath, disk)
        elif "/devices/css" in syspath:
            found = self._ccw_device(syspath, disk)
        elif "/virtio" in syspath:
            found = self._nonpci_virtio(syspath, disk)
        else:
            found = False
        return disk if found or "dev" in disk or "serial" in disk else None

    def serial(self, syspath: str) -> str | None:
        """udev's ID_SERIAL, as qemu-ga gives it. (A virtio disk's own ``serial``
        file in /sys is not read: reading it is a request to the device, about
        10 ms, and one that a stuck device would never answer.)"""
        return self.udev_properties(syspath).get("ID_SERIAL") or None

    def _driver(self, device: str) -> str | None:
        try:
            return os.path.basename(os.readlink(self.root.path(f"{device}/driver")))
        except OSError:
            return None

    def _pci_device(self, syspath: str, disk: Address) -> bool:
        start = syspath.find("/devices/pci") + len("/devices/pci")
        match = _PCI_ROOT.match(syspath, start)
        if match is None:
            return False
        pci = [int(group, 16) for group in match.groups()]
        end = match.end()
        # Walk down through PCI bridges to the first function with a disk driver.
        while (driver := self._driver(syspath[:end])) not in PCI_DRIVERS:
            step = _PCI_STEP.match(syspath, end)
            if step is None:
                return False
            pci = [int(group, 16) for group in step.groups()]
            end = step.end()

        target = None
        at = syspath.find("/target")
        if at >= 0 and (found := _TARGET.match(syspath, at + len("/target"))):
            target = [int(group) for group in found.groups()]

        host = None
        hosts: list[int] = []
        ata = syspath.find("/ata")
        at, prefix = (ata, "ata") if ata >= 0 else (syspath.find("/host"), "host")
        if at >= 0 and (number := _LEADING_NUMBER.match(syspath, at + 1 + len(prefix))):
            host = int(number.group())
            hosts = self._host_numbers(syspath[:at], prefix)

        disk["pci-controller"] = dict(zip(("domain", "bus", "slot", "function"), pci, strict=True))
        if driver == "ata_piix":  # a host per IDE bus; target*:0:<unit>:0
            if host is None or target is None or host not in hosts:
                return False
            disk.update({"bus-type": "ide", "bus": hosts.index(host), "unit": target[1]})
        elif driver == "sym53c8xx":  # LSI SCSI: target*:0:<unit>:0
            if target is None:
                return False
            disk.update({"bus-type": "scsi", "unit": target[1]})
        elif driver == "virtio-pci":
            if target is not None:  # virtio-scsi: target*:0:0:<unit>
                disk.update({"bus-type": "scsi", "unit": target[2]})
            else:  # virtio-blk: one disk per device
                disk["bus-type"] = "virtio"
        elif driver == "ahci":  # one host per unit
            if host is None or target is None or host not in hosts:
                return False
            disk.update({"bus-type": "sata", "unit": hosts.index(host)})
        elif driver == "nvme":
            disk["bus-type"] = "nvme"
        else:  # ehci-pci, xhci_hcd
            disk["bus-type"] = "usb"
        return True

    def _host_numbers(self, directory: str, prefix: str) -> list[int]:
        """The sorted N of the ``ataN`` or ``hostN`` entries of ``directory``."""
        try:
            names = os.listdir(self.root.path(directory))
        except OSError:
            return []
        pattern = re.compile(rf"{prefix}(\d+)")
        return sorted(int(m.group(1)) for name in names if (m := pattern.match(name)))

    def _nonpci_virtio(self, syspath: str, disk: Address) -> bool:
        if "/virtio" not in syspath or "/block" not in syspath:
            return False
        at = syspath.find("/target")
        if at >= 0 and (found := _TARGET.match(syspath, at + len("/target"))):
            bus, target, unit = (int(group) for group in found.groups())
            disk.update({"bus-type": "scsi", "bus": bus, "target": target, "unit": unit})
        else:
            disk["bus-type"] = "virtio"
        return True

    def _ccw_device(self, syspath: str, disk: Address) -> bool:
        at = syspath.find("/devices/css")
        match = _CCW.match(syspath, at + len("/devices/css"))
        if match is None:
            return False
        cssid, ssid, subchno, devno = (int(group, 16) for group in match.groups())
        disk["ccw-address"] = {"cssid": cssid, "ssid": ssid, "subchno": subchno, "devno": devno}
        if "/virtio" in syspath[at:]:
            self._nonpci_virtio(syspath, disk)
        return True

    # -- guest-get-disks -------------------------------------------------------
    def disks(self) -> list[dict[str, Any]]:
        """GuestDiskInfo for every disk of /sys/block with a size, each followed
        by its partitions."""
        block = self.root.path("/sys/block")
        try:
            names = sorted(os.listdir(block))
        except OSError as err:
            raise DiskListError(f'Can\'t open directory "/sys/block": {err.strerror}') from err
        found: list[dict[str, Any]] = []
        for name in names:
            if not (block / name).is_symlink():
                continue
            size = self._read(f"/sys/block/{name}/size")
            if size is None or size.strip() == "0":
                continue
            found.extend(self._disk(name))
        return found

    def _disk(self, name: str) -> list[dict[str, Any]]:
        disk_dir = f"/sys/block/{name}"
        dev = self.devnode(disk_dir)
        if dev is None:
            return []
        # Members in the schema's order, as qemu-ga sends them.
        disk: dict[str, Any] = {"name": dev, "partition": False}
        slaves = self.root.path(f"{disk_dir}/slaves")
        if slaves.is_dir():
            dependencies = (
                self.devnode(f"{disk_dir}/slaves/{e}") for e in sorted(os.listdir(slaves))
            )
            disk["dependencies"] = [d for d in dependencies if d is not None]
        syspath = self.realpath(disk_dir)
        if syspath is not None and not self.is_virtual(syspath):
            _, addresses = self.device_disks(disk_dir)
            if addresses:
                disk["address"] = addresses[0]
        alias = self.udev_properties(disk_dir).get("DM_NAME") or (
            (self._read(f"{disk_dir}/dm/name") or "").strip()
        )
        if alias:
            disk["alias"] = alias
        partitions = []
        for entry in sorted(os.listdir(self.root.path(disk_dir))):
            if (
                not _is_partition_name(name, entry)
                or not self.root.path(f"{disk_dir}/{entry}").is_dir()
            ):
                continue
            partition_dev = self.devnode(f"{disk_dir}/{entry}")
            if partition_dev is not None:
                partitions.append({"name": partition_dev, "partition": True, "dependencies": [dev]})
        return [disk, *partitions]


def _is_partition_name(disk: str, entry: str) -> bool:
    """``<disk><digit>...`` or ``<disk>p<digit>...`` (sda1, nvme0n1p1), as qemu-ga checks."""
    if not entry.startswith(disk):
        return False
    rest = entry[len(disk) :]
    if rest.startswith("p"):
        rest = rest[1:]
    return rest[:1].isdigit()


class DiskListError(Exception):
    """/sys/block cannot be listed."""


def sys_dev_block(device: int) -> str:
    """The /sys/dev/block link of a device number."""
    return f"/sys/dev/block/{os.major(device)}:{os.minor(device)}"
