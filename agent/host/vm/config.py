"""What a VM is made of: :class:`VmConfig` (frozen: equal configurations make
equal VMs, which the pytest plugin shares)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

AGENT_PORT = "org.qemu.guest_agent.0"  # the name hosts (libvirt, QEMU's docs) use
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUNDIR = "/run/trio-qga-vm"  # the guest init's directory in the guest


@dataclass(frozen=True)
class Drive:
    """A disk image the guest sees as a virtio disk (/dev/vda, /dev/vdb, ...)."""

    path: Path
    serial: str | None = None  # shown by the guest (udev, guest-get-fsinfo)
    format: Literal["raw", "qcow2"] = "raw"
    readonly: bool = False


@dataclass(frozen=True)
class VmConfig:
    """A throw-away VM of this machine: its root, read-only, under a tmpfs overlay;
    trio-qga on a virtio-serial port; whatever else is asked for here."""

    cpus: int = 2
    memory: int = 1024  # MiB
    accel: Literal["auto", "kvm", "tcg"] = "auto"  # auto: KVM when it can run a guest
    boot_timeout: float = 300.0  # seconds from QEMU's start to the agent's first answer
    timeout: float | None = None  # seconds the VM may run in all; then it is stopped
    request_timeout: float = 60.0  # seconds for any one exchange with the agent
    # The root's transport: "9p" (QEMU's own), "virtiofs" (virtiofsd beside QEMU; root
    # only), "auto": the faster of them here (agent/host/vm/virtiofs.py, docs/vm.md).
    root_fs: Literal["auto", "9p", "virtiofs"] = "auto"
    shares: tuple[Path, ...] = ()  # host directories shared read-write at their own paths (9p)
    drives: tuple[Drive, ...] = ()
    network: bool = False  # QEMU's user networking: 10.0.2.15, gateway 10.0.2.2
    isa_serial: bool = False  # an ISA serial port (the guest's /dev/ttyS1) on a socket
    ports: tuple[str, ...] = ()  # more virtio-serial ports, each on a socket
    agent_port: str = AGENT_PORT
    systemd: bool = False  # systemd as PID 1 (slower to boot; services, udev, journald)
    hostname: str = "trio-qga-vm"
    modules: tuple[str, ...] = ()  # more kernel modules the guest can load (modprobe)
    # The guest's agent: None is trio-qga on agent_port; () starts none (the guest
    # starts its own on agent_port, such as a packaged unit under systemd).
    agent: tuple[str, ...] | None = None
    agent_args: tuple[str, ...] = ()  # added to trio-qga's command line
    env: tuple[str, ...] = ()  # NAME=VALUE for the agent and all it runs
    python: str = field(default_factory=lambda: sys.executable)  # runs trio-qga in the guest
    # Where the launcher keeps, and remakes when stale, the list of files the guest
    # reads ahead while its agent starts (agent/host/vm/warm.py): set by the launcher
    # for its own trio-qga, in the guest's cache directory; None: no read-ahead.
    warm_files: Path | None = None
    append: str = ""  # more kernel command line
    qemu_args: tuple[str, ...] = ()  # more QEMU arguments, last

    def agent_command(self) -> tuple[str, ...]:
        """The guest's agent command line; () for none."""
        if self.agent is not None:
            return self.agent
        command = [self.python, "-m", "agent", "-m", "virtio-serial"]
        command += ["-p", f"/dev/virtio-ports/{self.agent_port}", "-t", f"{RUNDIR}/state"]
        if not self.systemd:  # busybox's init: power off and reboot straight away
            for action in ("poweroff", "halt", "reboot"):
                command += [f"--{action}-command", f"{RUNDIR}/bin/busybox {action} -f"]
        return (*command, *self.agent_args)

    def agent_environment(self) -> tuple[str, ...]:
        """The environment of the guest's agent (which its programs inherit)."""
        base = (
            f"PATH={GUEST_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "TERM=linux",
            f"QGA_CONF={RUNDIR}/no-qemu-ga.conf",  # not the host's configuration file
        )
        return (*base, *self.env)

    def virtio_ports(self) -> tuple[str, ...]:
        return (self.agent_port, *self.ports)
