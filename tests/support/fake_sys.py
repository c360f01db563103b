"""A scratch /sys for the disk and filesystem information commands."""

from __future__ import annotations

import os
from pathlib import Path


class FakeSys:
    """A scratch /sys (and /run/udev) with block devices where the kernel puts them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for directory in ("sys/block", "sys/dev/block", "run/udev/data"):
            (root / directory).mkdir(parents=True, exist_ok=True)

    def link(self, path: str, target: str) -> None:
        """A relative symlink at ``path`` to ``target`` (both absolute, inside the root)."""
        at = self.root / path.lstrip("/")
        at.parent.mkdir(parents=True, exist_ok=True)
        at.symlink_to(os.path.relpath(self.root / target.lstrip("/"), at.parent))

    def driver(self, device: str, name: str) -> None:
        self.link(f"{device}/driver", f"/sys/bus/pci/drivers/{name}")

    def disk(self, parent: str, name: str, number: str, size: str = "2048\n") -> str:
        """A disk ``name`` under the device directory ``parent``; returns its /sys path."""
        path = f"{parent}/block/{name}"
        self._device(path, name, number, "disk", size)
        (self.root / path.lstrip("/") / "slaves").mkdir()
        self.link(f"/sys/block/{name}", path)
        return path

    def partition(self, disk: str, name: str, number: str) -> str:
        path = f"{disk}/{name}"
        self._device(path, name, number, "partition", "1024\n")
        (self.root / path.lstrip("/") / "partition").write_text("1\n")
        return path

    def virtual(self, name: str, number: str, slaves: tuple[str, ...] = ()) -> str:
        path = self.disk("/sys/devices/virtual", name, number)
        for slave in slaves:
            self.link(f"{path}/slaves/{os.path.basename(slave)}", slave)
        return path

    def udev(self, number: str, **properties: str) -> None:
        lines = [f"E:{key}={value}" for key, value in properties.items()]
        (self.root / f"run/udev/data/b{number}").write_text("\n".join(["S:x", *lines]) + "\n")

    def _device(self, path: str, name: str, number: str, kind: str, size: str) -> None:
        directory = self.root / path.lstrip("/")
        directory.mkdir(parents=True)
        major, minor = number.split(":")
        (directory / "dev").write_text(f"{number}\n")
        (directory / "size").write_text(size)
        (directory / "uevent").write_text(
            f"MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE={kind}\n"
        )
        self.link(f"/sys/dev/block/{number}", path)
