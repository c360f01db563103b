"""libvirt for the tests: its daemons, started by the suite, and throw-away TCG domains.

:class:`LibvirtHost` starts ``virtlogd`` and ``libvirtd`` (as root) in a private mount
namespace where ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt`` and
``/var/log/libvirt`` are bind mounts of a temporary directory. The daemons get their own
configuration and state and leave no trace in this machine's libvirt: QEMU runs as root
with no relabelling (nothing here changes owner), no cgroups and no namespace of its own
(there is no systemd). As QEMU's user is root, libvirt sees ``/dev/kvm`` usable whatever
its mode, so it does not probe QEMU's capabilities again on every call (it does when
``/dev/kvm`` is root-only and QEMU runs as ``libvirt-qemu``: 72 s per ``virsh create``);
the domains are ``type='qemu'`` (TCG) anyway. The probe's result is kept in the VM
launcher's cache directory. Clients reach the daemons at
``qemu:///system?socket=DIR/run/libvirt-sock``.

:class:`GuestDomain` boots as the VM launcher's guests do (``agent.host.vm``,
``boot_files``): its kernel, an initramfs with its guest init, its modules and the
domain's settings, and this machine's root over 9p (tag ``root``) under a tmpfs
overlay; the guest's command is the domain's agent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
import trio

from agent.host.vm import Drive, VmConfig, boot_files
from agent.host.vm.cache import cache_dir
from agent.host.vm.initramfs import shares_of
from agent.host.vm.qemu import kernel_command_line
from tests.support.markers import require_marker

# Mounted on demand (ext4 asks the kernel for crc32c, crc32c_generic has it).
MODULES = ("ext4", "crc32c_generic")
UNSHARE = ("unshare", "--mount", "--propagation", "private")
DAEMON_DEADLINE = 120.0  # seconds for libvirtd to answer (its first QEMU probe is slow)

LIBVIRTD_CONF = """\
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{log}/libvirtd.log"
"""
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
cgroup_controllers = []
"""
LAUNCH = """\
set -e
mount --bind "$1/etc" /etc/libvirt
mount --bind "$1/run" /run/libvirt
mount --bind "$1/lib" /var/lib/libvirt
mount --bind "$1/log" /var/log/libvirt
mount --bind "$2" /var/cache/libvirt
virtlogd -p "$1/virtlogd.pid" &
exec libvirtd -p "$1/libvirtd.pid"
"""


def needs_libvirt() -> None:
    """Skips loudly without root or libvirt (fails in CI, whose setup installs it)."""
    missing = [tool for tool in ("virsh", "libvirtd", "virtlogd") if not shutil.which(tool)]
    reason = None
    if os.geteuid() != 0:
        reason = "the libvirt test starts libvirtd and QEMU as root"
    elif missing:
        reason = f"{', '.join(missing)} missing: scripts/setup --test installs libvirt"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class LibvirtHost:
    """virtlogd and libvirtd of our own, stopped by pid. Several may run at once, each
    with its own ``base`` (stop them in the reverse order: the first may have made
    ``/run/libvirt``, which it removes)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.uri = f"qemu:///system?socket={base}/run/libvirt-sock"
        self.daemon: subprocess.Popen[bytes] | None = None
        self._made_run_dir = False

    def start(self) -> None:
        """libvirtd and virtlogd running, answering ``virsh``; only for tests marked
        ``libvirt``."""
        require_marker("libvirt")
        for sub in ("etc", "run", "lib", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "etc" / "libvirtd.conf").write_text(
            LIBVIRTD_CONF.format(log=self.base / "log")
        )
        (self.base / "etc" / "qemu.conf").write_text(QEMU_CONF)
        caps = cache_dir() / "libvirt-cache"
        caps.mkdir(parents=True, exist_ok=True)
        run_dir = Path("/run/libvirt")  # the mount point must exist
        if not run_dir.exists():
            run_dir.mkdir()
            self._made_run_dir = True
        with open(self.base / "daemons.log", "wb") as output:
            self.daemon = subprocess.Popen(
                [*UNSHARE, "sh", "-c", LAUNCH, "sh", str(self.base), str(caps)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + DAEMON_DEADLINE
        while self.virsh("version").returncode != 0:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                log = (self.base / "daemons.log").read_text(errors="replace")
                raise RuntimeError(f"libvirtd did not start: {log[-2000:]}")
            time.sleep(0.2)

    def virsh(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["virsh", "-c", self.uri, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pause(self) -> None:
        """Stop libvirtd (SIGSTOP): its clients' calls hang, as when its host is cut off."""
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Destroy what still runs, then stop libvirtd and virtlogd by their pids."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.resume()  # if paused
            for name in self.virsh("list", "--name").stdout.split():
                self.virsh("destroy", name)
            self.daemon.send_signal(signal.SIGTERM)  # unshare and sh exec'd: it is libvirtd
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        pidfile = self.base / "virtlogd.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            _wait_gone(pid, 30)
        if self._made_run_dir:
            Path("/run/libvirt").rmdir()


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class GuestDomain:
    """One transient domain: the launcher's boot, a libvirt-owned agent channel, a small
    ext4 second disk, user networking; ``command`` runs in the guest on every boot, and
    the host directories ``shares`` are shared read-write at their own paths (9p
    without a cache: what the host writes there shows in the guest at once)."""

    MAC = "52:54:00:51:71:0a"  # the same for every test domain: their replies compare
    HOSTNAME = "libvirt-guest"

    def __init__(
        self, name: str, base: Path, command: list[str], shares: tuple[Path, ...] = ()
    ) -> None:
        self.name = name
        self.base = base
        self.command = command
        self.shares = shares
        self.console = base / "console.log"

    def prepare(self) -> Path:
        """Write the boot files, the disk and the domain XML; the XML's path. Only for
        tests marked ``vm`` (the domain boots the VM launcher's guest)."""
        require_marker("vm")
        self.base.mkdir(parents=True, exist_ok=True)
        disk = self.base / "disk.img"
        with open(disk, "wb") as image:
            image.truncate(64 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
        config = VmConfig(
            agent=tuple(self.command),
            network=True,
            drives=(Drive(disk),),
            hostname=self.HOSTNAME,
            modules=MODULES,
            shares=self.shares,
        )
        files = trio.run(boot_files, config, self.base)
        xml = self.base / "domain.xml"
        shares = "".join(
            "\n    <filesystem type='mount' accessmode='squash' multidevs='remap'>"
            f"<source dir={quoteattr(str(path))}/><target dir='{tag}'/></filesystem>"
            for tag, path in shares_of(config)
        )
        xml.write_text(
            self.xml(files.kernel.image, files.initrd, kernel_command_line(config), disk, shares)
        )
        return xml

    def xml(self, kernel: Path, initrd: Path, cmdline: str, disk: Path, shares: str) -> str:
        return f"""\
<domain type='qemu'>
  <name>{self.name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>{shutil.which("qemu-system-x86_64")}</emulator>
    <filesystem type='mount' accessmode='squash' multidevs='remap'>
      <source dir='/'/><target dir='root'/><readonly/>
    </filesystem>{shares}
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' discard='unmap'/>
      <source file={quoteattr(str(disk))}/><target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><mac address='{self.MAC}'/><model type='virtio'/></interface>
    <channel type='unix'>
      <source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <serial type='file'><source path={quoteattr(str(self.console))}/><target port='0'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""

    def boots(self) -> int:
        """How many times the guest came up to its command (the guest init says so)."""
        if not self.console.exists():
            return 0
        return self.console.read_text(errors="replace").count("trio-qga-vm: agent ")

    def guest_output(self) -> str:
        """The console's end (the init's steps, the command's output), for failures."""
        if not self.console.exists():
            return ""
        return self.console.read_text(errors="replace")[-3000:]
