"""The programs the launcher runs on the host, installed with apt-get on first use.

QEMU and a static busybox (the guest's first init runs from the initramfs,
before the guest's root exists) are all it needs; found by path, they may come
from anywhere. What is missing is installed from Debian's packages, as
``scripts/setup`` installs the others: as root, or through sudo, waiting for
apt's lock if another install runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from agent.host.vm.elf import is_static
from agent.host.vm.errors import VmError

APT_LOCK_TIMEOUT = 600  # seconds apt-get waits for another install to finish
QEMU = "qemu-system-x86_64"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")

Notice = Callable[[str], None]


@dataclass(frozen=True)
class Requirement:
    package: str  # the Debian package that brings it
    what: str

    def present(self) -> bool:
        if self.package == "busybox-static":
            return static_busybox() is not None
        return shutil.which(QEMU) is not None


REQUIREMENTS = (
    Requirement("qemu-system-x86", f"{QEMU}, the VM"),
    Requirement("busybox-static", "a static busybox, the guest's first init"),
)


def debian_packages() -> tuple[str, ...]:
    """The packages that bring everything, for ``scripts/setup`` and the docs."""
    return tuple(requirement.package for requirement in REQUIREMENTS)


def static_busybox() -> Path | None:
    for candidate in BUSYBOX_PATHS:
        path = Path(candidate)
        try:
            with open(path, "rb") as program:
                head = program.read(4096)
        except OSError:
            continue
        if is_static(head):
            return path
    return None


def qemu_binary() -> str:
    found = shutil.which(QEMU)
    if found is None:
        raise VmError(f"{QEMU} is missing (Debian package qemu-system-x86)")
    return found


async def ensure_packages(notice: Notice) -> None:
    """Install what is missing (apt-get, once); :class:`VmError` if that cannot be done."""
    missing = [requirement for requirement in REQUIREMENTS if not requirement.present()]
    if not missing:
        return
    packages = [requirement.package for requirement in missing]
    needs = "; ".join(requirement.what for requirement in missing)
    if shutil.which("apt-get") is None:
        raise VmError(f"missing: {needs}; install {' '.join(packages)} or their equivalents")
    notice(f"installing {' '.join(packages)} (apt-get, one-time)")
    await apt_get("update", "-qq")
    await apt_get("install", "-y", "-qq", "--no-install-recommends", *packages)
    still = [r.what for r in REQUIREMENTS if not r.present()]
    if still:
        raise VmError(f"still missing after apt-get install: {'; '.join(still)}")


async def apt_get(*args: str) -> None:
    """``apt-get ARGS`` as root (through sudo when we are not), its output in the error."""
    command = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT}", *args]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise VmError(f"{' '.join(command)} needs root (no sudo here)")
        command = ["sudo", "-n", *command]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = await trio.run_process(
        command, env=env, capture_stdout=True, stderr=subprocess.STDOUT, check=False
    )
    if done.returncode:
        output = done.stdout.decode(errors="replace").strip()[-2000:]
        raise VmError(f"{' '.join(command)} failed ({done.returncode}):\n{output}")
