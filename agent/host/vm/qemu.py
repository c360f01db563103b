"""QEMU's command line for a VM, and whether KVM can run it.

Every socket QEMU uses is made here first and handed to it as a file
descriptor: the agent's ports listen before QEMU starts (a host may connect
at once; the bytes wait until the guest reads them), and the console is one
end of a socket pair the launcher reads. No path to wait for, and nothing of
QEMU's to clean up after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.host.vm.config import VmConfig
from agent.host.vm.errors import VmError
from agent.host.vm.initramfs import shares_of
from agent.host.vm.virtiofs import root_fs

# Quiet (the serial console is slow under emulation), no reboot, and what
# makes a kernel boot faster in a VM: no crypto self-tests, no probing of PS/2
# devices that are not there, no CPU vulnerability mitigations (a throw-away
# test VM; under emulation they cost ~0.5-2 s of boot, loaded host), and PCI's
# interrupts routed from the BIOS's table instead of through ACPI: probing each
# virtio-pci device evaluated ACPI's routing methods, 120 ms a device under TCG
# (`initcall_debug`), 0.7 s of the init's module loading against 0.28 s without
# (first answer 0.4 s sooner: docs/vm.md, "Where a boot's time goes"). The
# machine is QEMU's "pc", whose BIOS has that table; libvirt's test domains too.
KERNEL_ARGS = (
    "console=ttyS0",
    "quiet",
    "loglevel=4",
    "panic=-1",
    "rdinit=/init",
    "cryptomgr.notests",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "i8042.dumbkbd",
    "mitigations=off",
    "pci=noacpi",
)
# systemd: not the host's fstab (its disks are not here), eth0 keeps its name.
SYSTEMD_ARGS = ("fstab=no", "net.ifnames=0")
P9 = "security_model=none,multidevs=remap"


def _value(text: object) -> str:
    """A value inside a QEMU option list, where a comma is written twice."""
    return str(text).replace(",", ",,")


def kvm_usable() -> bool:
    """A /dev/kvm we may use, and hardware virtualisation under it.

    Some sandboxes offer a /dev/kvm (kvm_pvm, for one) that runs only specially
    built guest kernels: a stock kernel crawls or dies there. The CPU flags
    tell them apart."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"vmx", "svm"} & set(flags.split()))


def choose_accel(config: VmConfig) -> str:
    if config.accel != "auto":
        return config.accel
    return "kvm" if kvm_usable() else "tcg"


@dataclass(frozen=True)
class Wiring:
    """The file descriptors QEMU inherits: the console, one listening socket per
    agent port (virtio-serial by name, and the ISA serial port), and with a
    virtiofs root its end of virtiofsd's socket, connected."""

    console: int
    ports: dict[str, int]
    isa: int | None
    virtiofs: int | None = None


def kernel_command_line(config: VmConfig) -> str:
    args = list(KERNEL_ARGS)
    if config.systemd:
        args += SYSTEMD_ARGS
    if config.append:
        args.append(config.append)
    return " ".join(args)


def root_device(config: VmConfig, wiring: Wiring) -> list[str]:
    """The machine and the root's device, tagged ``root``: 9p (QEMU serves it,
    read-only), or virtiofs (vhost-user: virtiofsd serves it from the guest's
    memory, which must then be shared with it, hence memfd)."""
    if root_fs(config) == "9p":
        return ["-M", "pc", "-virtfs", f"local,path=/,mount_tag=root,readonly=on,{P9}"]
    if wiring.virtiofs is None:
        raise VmError("a virtiofs root without virtiofsd's socket")
    return [
        *("-object", f"memory-backend-memfd,id=mem,size={config.memory}M,share=on"),
        *("-M", "pc,memory-backend=mem"),
        *("-chardev", f"socket,id=root,fd={wiring.virtiofs}"),
        *("-device", "vhost-user-fs-pci,chardev=root,tag=root"),
    ]


def command_line(
    config: VmConfig,
    *,
    qemu: str,
    accel: str,
    kernel: Path,
    initrd: Path,
    wiring: Wiring,
) -> list[str]:
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    command = [
        qemu,
        *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"),
        *cpu,
        *("-m", str(config.memory), "-smp", str(config.cpus)),
        *root_device(config, wiring),
        *("-kernel", str(kernel), "-initrd", str(initrd)),
        *("-append", kernel_command_line(config)),
        *("-chardev", f"socket,id=console,fd={wiring.console}"),
        *("-device", "isa-serial,chardev=console,index=0"),
        *("-device", "virtio-rng-pci", "-device", "virtio-serial-pci"),
    ]
    for tag, path in shares_of(config):
        command += ["-virtfs", f"local,path={_value(path)},mount_tag={tag},{P9}"]
    for index, (name, fd) in enumerate(wiring.ports.items()):
        command += [
            *("-chardev", f"socket,id=port{index},fd={fd},server=on,wait=off"),
            *("-device", f"virtserialport,chardev=port{index},name={name}"),
        ]
    if wiring.isa is not None:
        command += [
            *("-chardev", f"socket,id=isa,fd={wiring.isa},server=on,wait=off"),
            *("-device", "isa-serial,chardev=isa,index=1"),
        ]
    if config.network:
        command += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
    for index, drive in enumerate(config.drives):
        options = f"file={_value(drive.path)},if=none,id=drive{index},format={drive.format}"
        if drive.readonly:
            options += ",readonly=on"
        device = f"virtio-blk-pci,drive=drive{index}"
        if drive.serial:
            device += f",serial={_value(drive.serial)}"
        command += ["-drive", options, "-device", device]
    return [*command, *config.qemu_args]
