"""The guest's initramfs: a static busybox, the guest init and the modules it needs.

The base image (busybox, the init, the modules the boot loads and those the
guest may load later) depends only on the kernel and the sets of modules: it
is built once and cached. Each boot appends a small archive of its own
settings (``etc/trio-qga-vm/boot.conf``, sourced by the init) to a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from pathlib import Path

import trio

from agent.host.vm.cache import cache_lock, staging
from agent.host.vm.config import AGENT_PORT, VmConfig
from agent.host.vm.cpio import CpioWriter
from agent.host.vm.errors import VmError
from agent.host.vm.kernel import Kernel, module_files, read_module
from agent.host.vm.packages import static_busybox
from agent.host.vm.virtiofs import root_fs

# Loaded at every boot: the PCI transport, the consoles and ports, randomness,
# 9p (the root's or the shares') and the overlay on the root (Debian's kernel
# builds them as modules); virtiofs when the root comes over it.
BOOT_MODULES = ("virtio_pci", "virtio_console", "virtio_rng", "9pnet_virtio", "9p", "overlay")
VIRTIOFS_MODULES = ("virtiofs",)
NETWORK_MODULES = ("virtio_net",)
DRIVE_MODULES = ("virtio_blk",)
CONSOLE = (5, 1)  # /dev/console, for the init's first output
LAYOUT = 3  # of the cached base image: count up when _build changes it
HOST_AGENT_UNITS = ("qemu-guest-agent.service", "trio-qga.service")


def guest_init() -> bytes:
    return (resources.files("agent.host.vm") / "guest" / "init").read_bytes()


def boot_modules(config: VmConfig) -> tuple[str, ...]:
    """What the init loads: the base, and the drivers of the devices asked for
    (without udev nobody else would)."""
    load = list(BOOT_MODULES)
    if root_fs(config) == "virtiofs":
        load += VIRTIOFS_MODULES
    if config.network:
        load += NETWORK_MODULES
    if config.drives:
        load += DRIVE_MODULES
    return tuple(load)


@dataclass(frozen=True)
class BaseImage:
    """The cached part of a boot: the initramfs, and the module tree the guest
    mounts over 9p as its /lib/modules/<version> (None: its root has them)."""

    initramfs: Path
    modules: Path | None


async def base_image(cache: Path, kernel: Kernel, config: VmConfig) -> BaseImage:
    """The cached base image for ``config``'s modules, built if missing."""
    index = kernel.index()
    everything = index.load_order([*boot_modules(config), *config.modules])
    busybox = static_busybox()
    if busybox is None:
        raise VmError("no static busybox (Debian package busybox-static)")
    init = guest_init()
    facts = busybox.stat()
    fingerprint = json.dumps(
        [
            LAYOUT,
            kernel.key,
            boot_modules(config),
            everything,
            hashlib.sha256(init).hexdigest(),
            [str(busybox), facts.st_size, facts.st_mtime_ns],
            shutil.which("depmod"),
        ]
    )
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    home = cache / "initramfs" / f"{kernel.key}-{digest}"
    if not (home / "initrd.cpio").exists():
        await module_files(cache, kernel, everything)
        async with cache_lock(cache):
            if not (home / "initrd.cpio").exists():
                await trio.to_thread.run_sync(
                    _build, home, kernel, busybox, init, boot_modules(config), everything
                )
    return BaseImage(home / "initrd.cpio", None if kernel.package is None else home / "modules")


def _build(
    home: Path, kernel: Kernel, busybox: Path, init: bytes, load: Sequence[str], tree: list[str]
) -> None:
    with staging(home.parent, home) as staged:
        modules = staged / "modules"  # the guest's /lib/modules/<version>
        _module_tree(modules, kernel, busybox, tree)
        with open(staged / "initrd.cpio", "wb") as out:
            archive = CpioWriter(out)
            for directory in ("bin", "dev", "etc/trio-qga-vm", "proc", "sys", "mnt", "run"):
                archive.directory(directory)
            archive.char_device("dev/console", *CONSOLE)
            archive.file("bin/busybox", busybox.read_bytes(), 0o755)
            applets = subprocess.run(
                [str(busybox), "--list"], capture_output=True, text=True, check=True
            ).stdout.split()
            for applet in applets:
                if applet != "busybox":
                    archive.symlink(f"bin/{applet}", "busybox")
            archive.file("init", init, 0o755)
            archive.file("etc/trio-qga-vm/load", (" ".join(load) + "\n").encode())
            for path in sorted(modules.rglob("*")):
                if path.is_file():
                    name = f"lib/modules/{kernel.version}/{path.relative_to(modules)}"
                    archive.file(name, path.read_bytes())
            archive.close()


def _module_tree(modules: Path, kernel: Kernel, busybox: Path, tree: list[str]) -> None:
    """The modules, plain (busybox's modprobe takes no compressed ones), and the
    index files depmod makes of them (modprobe in the initramfs and the guest)."""
    for relative in tree:
        name, data = read_module(kernel, relative)
        (modules / name).parent.mkdir(parents=True, exist_ok=True)
        (modules / name).write_bytes(data)
    builtin = "".join(f"kernel/{name}.ko\n" for name in sorted(kernel.index().builtin))
    (modules / "modules.builtin").write_text(builtin)
    with tempfile.TemporaryDirectory() as base:
        # depmod -b BASE wants BASE/lib/modules/<version>
        link = Path(base) / "lib" / "modules" / kernel.version
        link.parent.mkdir(parents=True)
        link.symlink_to(modules)
        depmod = shutil.which("depmod")  # kmod's, whose modprobe the guest then has
        command = [depmod] if depmod else [str(busybox), "depmod"]
        subprocess.run([*command, "-b", base, kernel.version], check=True, capture_output=True)


def boot_archive(config: VmConfig, kernel: Kernel, base: BaseImage) -> bytes:
    """The per-boot settings, as a cpio archive to append to the base image."""
    agent = config.agent_command()
    mask = HOST_AGENT_UNITS if agent and config.agent_port == AGENT_PORT else ()
    settings = {
        "KERNEL": kernel.version,
        "MODULES": "" if base.modules is None else str(base.modules),
        "VM_HOSTNAME": config.hostname,
        "ROOT_FS": root_fs(config),
        "NETWORK": "1" if config.network else "0",
        "SYSTEMD": "1" if config.systemd else "0",
        "PORTS": " ".join(config.virtio_ports()),
        "AGENT": shlex.join(agent),
        "AGENT_ENV": shlex.join(config.agent_environment()),
        "MASK": " ".join(mask),
        "WARM": "" if config.warm_files is None else str(config.warm_files),
    }
    conf = "".join(f"{name}={shlex.quote(value)}\n" for name, value in settings.items())
    shares = "".join(f"{tag} {path}\n" for tag, path in shares_of(config))
    out = BytesIO()
    archive = CpioWriter(out)
    archive.file("etc/trio-qga-vm/boot.conf", conf.encode())
    archive.file("etc/trio-qga-vm/shares", shares.encode())
    archive.close()
    return out.getvalue()


def check_settings(config: VmConfig) -> None:
    """What the init's line-based files cannot carry."""
    for value in (config.hostname, *map(str, config.shares), *config.virtio_ports()):
        if "\n" in value or not value:
            raise VmError(f"{value!r}: empty, or with a newline")
    for path in config.shares:
        if not path.is_absolute() or not path.is_dir():
            raise VmError(f"share {path}: not an absolute path to a directory")
    for port in config.virtio_ports():
        if any(char.isspace() or char == "/" for char in port):
            raise VmError(f"virtio-serial port name {port!r}: no spaces or slashes")


def write_initrd(base: BaseImage, config: VmConfig, kernel: Kernel, out: Path) -> None:
    """The initrd of one boot: the base image with the boot's settings after it."""
    check_settings(config)
    with open(base.initramfs, "rb") as source, open(out, "wb") as target:
        shutil.copyfileobj(source, target)
        target.write(boot_archive(config, kernel, base))


def shares_of(config: VmConfig) -> Sequence[tuple[str, Path]]:
    """(9p tag, host directory) of each read-write share, as the init mounts them."""
    return [(f"share{index}", path) for index, path in enumerate(config.shares)]
