"""Throw-away test VMs of this machine, with trio-qga inside (``trio-qga-vm``).

    from agent.host.vm import VmConfig, boot_vm

    async with boot_vm(VmConfig(memory=2048)) as vm:
        await vm.run(["make", "-C", "/src", "check"], output=echo, check=True)

The pieces: :mod:`.config` (what a VM is made of), :mod:`.packages` (QEMU and
busybox, installed on first use), :mod:`.kernel` (this machine's kernel or
Debian's, cached), :mod:`.initramfs` (busybox, the guest init of ``guest/init``
and the modules), :mod:`.qemu` (the command line), :mod:`.virtiofs` (the root
over virtiofs, virtiofsd beside QEMU), :mod:`.machine` (``boot_vm``),
:mod:`.guest_cache` (the guest agent's plugin record, kept between boots),
:mod:`.background` (a VM in a thread, for synchronous code and pytest) and
:mod:`.cli` (``trio-qga-vm``).
"""

from agent.host.vm.config import Drive, VmConfig
from agent.host.vm.errors import BootFailed, VmError, VmTimeout
from agent.host.vm.machine import BootTimings, GuestCommandFailed, Vm, boot_files, boot_vm, echo

__all__ = [
    "BootFailed",
    "BootTimings",
    "Drive",
    "GuestCommandFailed",
    "Vm",
    "VmConfig",
    "VmError",
    "VmTimeout",
    "boot_files",
    "boot_vm",
    "echo",
]
