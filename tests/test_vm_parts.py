"""The VM launcher's parts, without booting anything: the cpio writer, the module
index, the kernel's choice, the init's settings, QEMU's command line, the cache's
lock, and a pytest plugin that loads none of it until a test asks for a VM."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from agent.host.vm import cache, elf, initramfs, kernel, qemu, rundir, virtiofs, warm
from agent.host.vm.config import RUNDIR, Drive, VmConfig
from agent.host.vm.cpio import CpioWriter
from agent.host.vm.errors import VmError
from agent.host.vm.guest_cache import with_guest_cache
from agent.host.vm.kernel import ModuleIndex, host_kernel_files, module_name
from agent.host.vm.packages import static_busybox


def unpack(archive: bytes, directory: Path) -> None:
    """What a cpio reader makes of ``archive`` (busybox's, as the kernel's is not at hand)."""
    busybox = static_busybox()
    assert busybox is not None, "scripts/setup --vm installs busybox-static"
    directory.mkdir()
    subprocess.run(
        [str(busybox), "cpio", "-id"], input=archive, cwd=directory, check=True, capture_output=True
    )


def test_cpio_archive_holds_files_links_devices_and_every_parent(tmp_path: Path) -> None:
    out = (tmp_path / "a.cpio").open("wb")
    archive = CpioWriter(out)
    archive.file("lib/modules/6.1/kernel/fs/x.ko", b"module", 0o644)
    archive.file("init", b"#!/bin/sh\n", 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.char_device("dev/null", 1, 3)
    archive.close()
    out.close()
    data = (tmp_path / "a.cpio").read_bytes()
    assert len(data) % 4 == 0  # another archive may follow
    unpack(data, tmp_path / "root")
    root = tmp_path / "root"
    assert (root / "lib/modules/6.1/kernel/fs/x.ko").read_bytes() == b"module"
    assert (root / "init").stat().st_mode & 0o777 == 0o755
    assert (root / "bin/sh").readlink() == Path("busybox")
    # The kernel makes no missing directory: each parent comes before its entries.
    listing = subprocess.run(
        [str(static_busybox()), "cpio", "-t"], input=data, capture_output=True, check=True
    ).stdout.decode()
    names = listing.split()
    for name in names:
        parent = name.rpartition("/")[0]
        assert not parent or names.index(parent) < names.index(name), name


def test_two_writes_of_the_same_content_are_the_same_bytes(tmp_path: Path) -> None:
    def write() -> bytes:
        path = tmp_path / "x.cpio"
        with path.open("wb") as out:
            archive = CpioWriter(out)
            archive.file("a/b", b"c")
            archive.close()
        return path.read_bytes()

    assert write() == write()  # so a cached image's key says what is in it


INDEX = ModuleIndex(
    files={
        "ext4": "kernel/fs/ext4/ext4.ko",
        "jbd2": "kernel/fs/jbd2/jbd2.ko",
        "mbcache": "kernel/fs/mbcache.ko",
        "crc16": "kernel/lib/crc16.ko",
        "virtio_blk": "kernel/drivers/block/virtio_blk.ko",
    },
    depends={"ext4": ["jbd2", "mbcache", "crc16"], "jbd2": [], "virtio_blk": ["virtio"]},
    builtin=frozenset({"virtio"}),
)


def test_modules_load_after_what_they_need() -> None:
    order = INDEX.load_order(["ext4", "virtio-blk"])
    assert order[-1] == "kernel/drivers/block/virtio_blk.ko"
    assert order.index("kernel/fs/ext4/ext4.ko") > max(
        order.index(f"kernel/{path}")
        for path in ("fs/jbd2/jbd2.ko", "fs/mbcache.ko", "lib/crc16.ko")
    )
    assert len(order) == len(set(order)) == 5  # virtio is built in: no file


def test_an_unknown_module_is_an_error() -> None:
    with pytest.raises(VmError, match="no module nosuch"):
        INDEX.load_order(["nosuch"])


@pytest.mark.parametrize(
    ("given", "name"),
    [("kernel/fs/ext4/ext4.ko", "ext4"), ("virtio-rng", "virtio_rng"), ("a/b-c.ko.xz", "b_c")],
)
def test_module_names(given: str, name: str) -> None:
    assert module_name(given) == name


def test_index_of_an_installed_tree(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\n"
    )
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\n")
    index = kernel._index_of_tree(tmp_path)
    assert index.load_order(["ext4", "virtio"]) == [
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
    ]


def test_the_host_kernel_is_used_when_readable_with_its_modules(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    assert host_kernel_files(boot, modules, "6.1.0-1") is None  # none at all (this machine)
    (boot / "vmlinuz-6.1.0-1").write_bytes(b"running")
    (boot / "vmlinuz-6.9.0-2").write_bytes(b"newer")
    assert host_kernel_files(boot, modules, "6.1.0-1") is None  # no modules installed
    for version in ("6.1.0-1", "6.9.0-2"):
        (modules / version).mkdir(parents=True)
        (modules / version / "modules.dep").write_text("")
    assert host_kernel_files(boot, modules, "6.1.0-1") == (
        boot / "vmlinuz-6.1.0-1",
        modules / "6.1.0-1",
    )  # the running release first
    assert host_kernel_files(boot, modules, "5.10.0-9") is not None  # else another one


def test_elf_checks() -> None:
    busybox = static_busybox()
    assert busybox is not None
    assert elf.is_static(busybox.read_bytes()[:4096])
    assert not elf.is_static(Path(sys.executable).resolve().read_bytes()[:4096])
    assert not elf.is_static(b"#!/bin/sh\n")
    assert elf.unpack_bzimage(b"no kernel here") is None


def settings(config: VmConfig) -> dict[str, str]:
    """The init's settings for ``config``, as its shell reads them."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "root"
        base = initramfs.BaseImage(Path("/nonexistent/initrd.cpio"), Path("/cache/modules"))
        unpack(initramfs.boot_archive(config, _kernel(), base), root)
        names = [
            "KERNEL",
            "MODULES",
            "VM_HOSTNAME",
            "ROOT_FS",
            "NETWORK",
            "SYSTEMD",
            "PORTS",
            "AGENT",
            "AGENT_ENV",
            "MASK",
            "WARM",
        ]
        script = f". {root}/etc/trio-qga-vm/boot.conf\n"
        script += "".join(f'printf "%s=%s\\n" {name} "${name}"\n' for name in names)
        output = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in output.stdout.splitlines())


def _kernel() -> kernel.Kernel:
    home = Path("/nonexistent")
    return kernel.Kernel("k", home, "6.1.0-9-amd64", home / "vmlinux", home / "modules", None)


def test_settings_carry_any_argument_to_the_guest() -> None:
    odd = ("it's", "a b", '$(touch /x) "q"', "")
    found = settings(VmConfig(agent=("/bin/echo", *odd), env=("A=b c",)))
    assert shlex.split(found["AGENT"]) == ["/bin/echo", *odd]
    assert "A=b c" in shlex.split(found["AGENT_ENV"])
    assert found["KERNEL"] == "6.1.0-9-amd64"
    assert found["MODULES"] == "/cache/modules"  # the guest mounts it from the shared root


def test_trio_qga_is_the_agent_unless_told_otherwise() -> None:
    plain = shlex.split(settings(VmConfig(python="/py"))["AGENT"])
    assert plain[:3] == ["/py", "-m", "agent"]
    assert plain[plain.index("-p") + 1] == "/dev/virtio-ports/org.qemu.guest_agent.0"
    # Without systemd, a power-off is busybox's, at once.
    assert f"{RUNDIR}/bin/busybox poweroff -f" in plain
    with_systemd = settings(VmConfig(systemd=True))
    assert "--poweroff-command" not in with_systemd["AGENT"]
    # The host's agents would take our port from us under systemd: masked.
    assert with_systemd["MASK"] == "qemu-guest-agent.service trio-qga.service"
    assert settings(VmConfig(systemd=True, agent=()))["MASK"] == ""  # the guest's own agent
    assert settings(VmConfig(agent_port="test.0", ports=("org.qemu.guest_agent.0",)))["PORTS"] == (
        "test.0 org.qemu.guest_agent.0"
    )


def test_the_guest_agent_keeps_its_plugin_record_in_the_launcher_s_cache(
    tmp_path: Path,
) -> None:
    config = with_guest_cache(VmConfig(shares=(tmp_path,), agent_args=("-v",)), tmp_path / "c")
    kept = tmp_path / "c" / "guest-cache"
    assert kept.is_dir()
    assert config.shares == (tmp_path, kept)
    agent = shlex.split(settings(config)["AGENT"])
    assert agent[agent.index("--cache-dir") + 1] == str(kept)
    assert agent[-1] == "-v"  # the user's arguments come last: theirs win
    assert config.warm_files == kept / warm.LIST  # the files its start reads, read ahead
    assert settings(config)["WARM"] == str(kept / warm.LIST)
    own = VmConfig(agent=("/bin/my-agent",))  # not ours: nothing to keep for it
    assert with_guest_cache(own, tmp_path / "d") == own
    assert not (tmp_path / "d").exists()


def test_the_read_ahead_list_holds_the_agent_s_start_and_is_made_once(tmp_path: Path) -> None:
    """The files the guest's agent starts from, listed by the guest's Python on
    the host: its compiled modules and small libraries, after a stamp line; made
    again only when the stamp changes."""
    target = tmp_path / warm.LIST
    warm.refresh(sys.executable, target)
    stamp, *files = target.read_text().splitlines()
    assert stamp.startswith(f"# {sys.executable} ")
    compiled = {Path(name).name.split(".")[0] for name in files if name.endswith(".pyc")}
    assert {"_run", "session", "stream_exec", "virtio"} <= compiled  # trio's, the agent's
    assert all(Path(name).is_file() for name in files)
    assert all(Path(name).stat().st_size <= warm.BIGGEST for name in files)
    made = target.stat().st_mtime_ns
    warm.refresh(sys.executable, target)
    assert target.stat().st_mtime_ns == made  # the same stamp: not made again
    target.write_text("# an older stamp\n/nonexistent\n")
    warm.refresh(sys.executable, target)
    assert target.read_text().splitlines()[0] == stamp


def test_settings_that_the_init_could_not_read_are_refused(tmp_path: Path) -> None:
    for config in (
        VmConfig(hostname="a\nb"),
        VmConfig(ports=("a b",)),
        VmConfig(shares=(Path("relative"),)),
        VmConfig(shares=(tmp_path / "missing",)),
    ):
        with pytest.raises(VmError):
            initramfs.check_settings(config)


def qemu_command(config: VmConfig, wiring: qemu.Wiring) -> list[str]:
    """QEMU's command line for ``config``, with stand-ins for the binary and boot files."""
    return qemu.command_line(
        config, qemu="qemu", accel="tcg", kernel=Path("/k"), initrd=Path("/i"), wiring=wiring
    )


def test_qemu_command_line(tmp_path: Path) -> None:
    share = tmp_path / "a,b"
    share.mkdir()
    config = VmConfig(
        cpus=3,
        memory=777,
        shares=(share,),
        drives=(Drive(tmp_path / "d.img", serial="S1"),),
        network=True,
        qemu_args=("-S",),
    )
    wiring = qemu.Wiring(console=10, ports={"org.qemu.guest_agent.0": 11, "x.0": 12}, isa=13)
    command = qemu_command(config, wiring)
    line = shlex.join(command)
    assert command[command.index("-smp") : command.index("-smp") + 2] == ["-smp", "3"]
    assert "-m 777" in line
    assert f"path={tmp_path}/a,,b,mount_tag=share0" in line  # QEMU's comma, doubled
    assert "socket,id=console,fd=10" in line
    assert "socket,id=port0,fd=11,server=on,wait=off" in line
    assert "virtserialport,chardev=port1,name=x.0" in line
    assert "socket,id=isa,fd=13,server=on,wait=off" in line
    assert "virtio-blk-pci,drive=drive0,serial=S1" in line
    assert "virtio-net-pci" in line
    assert command[-1] == "-S"
    assert "fstab=no" not in qemu.kernel_command_line(config)
    assert "fstab=no" in qemu.kernel_command_line(VmConfig(systemd=True))


def test_the_root_comes_over_9p_or_virtiofs(tmp_path: Path) -> None:
    """The init mounts what QEMU serves: the same transport in the settings, the
    modules and the command line, tagged ``root`` either way."""

    def line(config: VmConfig, wiring: qemu.Wiring) -> str:
        return shlex.join(qemu_command(config, wiring))

    plain = qemu.Wiring(console=10, ports={}, isa=None)
    p9 = VmConfig(root_fs="9p", memory=777)
    assert "-M pc -virtfs local,path=/,mount_tag=root,readonly=on," in line(p9, plain)
    assert "vhost-user-fs" not in line(p9, plain)
    assert settings(p9)["ROOT_FS"] == "9p"
    assert "virtiofs" not in initramfs.boot_modules(p9)

    fs = VmConfig(root_fs="virtiofs", memory=777, shares=(tmp_path,))
    with pytest.raises(VmError, match="without virtiofsd"):
        line(fs, plain)
    shown = line(fs, qemu.Wiring(console=10, ports={}, isa=None, virtiofs=14))
    # The guest's memory is shared with virtiofsd: a memfd backend as the machine's RAM.
    assert "-object memory-backend-memfd,id=mem,size=777M,share=on" in shown
    assert "-M pc,memory-backend=mem" in shown
    assert "-chardev socket,id=root,fd=14 -device vhost-user-fs-pci,chardev=root,tag=root" in shown
    assert "mount_tag=root" not in shown
    assert f"path={tmp_path},mount_tag=share0" in shown  # shares stay on 9p
    assert settings(fs)["ROOT_FS"] == "virtiofs"
    assert initramfs.boot_modules(fs)[-1] == "virtiofs"
    assert "9p" in initramfs.boot_modules(fs)  # for the shares
    init = initramfs.guest_init().decode()
    assert "mount -t virtiofs -o ro root /mnt/root" in init


def test_auto_takes_virtiofs_only_where_it_is_the_faster_and_can_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(virtiofs, "virtiofsd_binary", lambda: "/usr/lib/qemu/virtiofsd")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for prefers in (False, True):
        monkeypatch.setattr(virtiofs, "AUTO_PREFERS_VIRTIOFS", prefers)
        assert virtiofs.root_fs(VmConfig()) == ("virtiofs" if prefers else "9p")
        assert virtiofs.with_root_fs(VmConfig()).root_fs == virtiofs.root_fs(VmConfig())
        assert virtiofs.root_fs(VmConfig(root_fs="9p")) == "9p"  # as asked
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert virtiofs.root_fs(VmConfig()) == "9p"  # virtiofsd runs as root only
    with pytest.raises(VmError, match="as root only"):
        virtiofs.check_virtiofs()
    monkeypatch.setattr(virtiofs, "virtiofsd_binary", lambda: None)
    with pytest.raises(VmError, match="no virtiofsd"):
        virtiofs.check_virtiofs()


def test_virtiofsd_serves_the_root_from_its_listening_socket() -> None:
    command = virtiofs.virtiofsd_command("/usr/lib/qemu/virtiofsd", 7)
    assert command[:2] == ["/usr/lib/qemu/virtiofsd", "--fd=7"]
    options = [command[i + 1] for i, arg in enumerate(command) if arg == "-o"]
    assert {"source=/", "sandbox=chroot", "cache=always"} <= set(options)


def read_only_mounts(pid: str) -> list[bool]:
    """Whether each mount of process ``pid`` is read-only (the namespace it sees)."""
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return [line.split()[5].split(",")[0] == "ro" for line in mounts]


def runs(pid: int, program: str) -> bool:
    """Process ``pid`` has exec'd ``program`` (its namespace is then in place)."""
    return Path(f"/proc/{pid}/exe").resolve() == Path(program)


@pytest.mark.skipif(
    virtiofs.virtiofsd_binary() is None or os.geteuid() != 0, reason="no virtiofsd, or not root"
)
async def test_virtiofsd_sees_every_mount_read_only_and_leaves_nothing(tmp_path: Path) -> None:
    """Before any VM: virtiofsd waits for QEMU on the socket, in a mount namespace of
    its own where every mount is read-only; the socket's path is gone at once, and
    virtiofsd is stopped and reaped when the block ends."""
    with trio.fail_after(30):
        async with virtiofs.running_virtiofsd(tmp_path) as server:
            assert not (tmp_path / "virtiofs.sock").exists()
            pid = server.daemon.pid
            while not runs(pid, virtiofs.VIRTIOFSD_PATHS[0]):  # noqa: ASYNC110 (a file)
                await trio.sleep(0.01)
            seen = read_only_mounts(str(pid))
            assert seen
            assert all(seen)
        assert server.daemon.returncode is not None
        assert not runs(pid, virtiofs.VIRTIOFSD_PATHS[0])
    assert sorted(os.listdir(tmp_path)) == ["virtiofsd.log"]
    assert not all(read_only_mounts("self"))  # ours are as they were


def test_boot_modules_follow_the_devices(tmp_path: Path) -> None:
    assert "virtio_net" not in initramfs.boot_modules(VmConfig())
    assert "virtio_net" in initramfs.boot_modules(VmConfig(network=True))
    assert "virtio_blk" in initramfs.boot_modules(VmConfig(drives=(Drive(tmp_path / "d"),)))


async def test_the_cache_lock_is_taken_by_one_at_a_time(tmp_path: Path) -> None:
    order: list[str] = []

    async def holder(name: str) -> None:
        async with cache.cache_lock(tmp_path):
            order.append(f"{name} in")
            await trio.sleep(0.2)
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder, "a")
        await trio.sleep(0.05)
        nursery.start_soon(holder, "b")
    assert order == ["a in", "a out", "b in", "b out"]


async def test_a_shared_lock_keeps_a_kernel_from_removal(tmp_path: Path) -> None:
    lock = tmp_path / "in-use"
    lock.touch()
    async with cache.file_lock(lock, shared=True):
        assert cache.try_lock_exclusive(lock) is None  # a VM runs it: stays
    fd = cache.try_lock_exclusive(lock)
    assert fd is not None


def test_staging_leaves_nothing_half_made(tmp_path: Path) -> None:
    final = tmp_path / "kernels" / "k1"

    def fail_half_way() -> None:
        with cache.staging(final.parent, final) as staged:
            (staged / "half").write_text("x")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert list(final.parent.iterdir()) == []
    with cache.staging(final.parent, final) as staged:
        (staged / "whole").write_text("x")
    assert [path.name for path in final.parent.iterdir()] == ["k1"]


def test_the_pytest_plugin_loads_no_launcher_until_asked() -> None:
    code = (
        "import sys, agent.testing; print(sorted(m for m in sys.modules if m.startswith('agent')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "['agent', 'agent.testing', 'agent.version']"


def test_kvm_only_with_hardware_virtualisation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "kvm_usable", lambda: False)
    assert qemu.choose_accel(VmConfig()) == "tcg"
    assert qemu.choose_accel(VmConfig(accel="kvm")) == "kvm"  # as asked


def test_a_killed_launcher_s_directory_goes_at_the_next_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed: a VM directory whose lock is free. Kept: one whose launcher runs (its
    lock held), one without the lock file (being made), anything else."""
    abandoned, being_made, other = (tmp_path / name for name in ("a", "b", "other"))
    for directory in (abandoned, being_made, other):
        directory.mkdir()
    abandoned = abandoned.rename(tmp_path / f"{rundir.PREFIX}abandoned")
    being_made = being_made.rename(tmp_path / f"{rundir.PREFIX}new")
    (abandoned / rundir.LOCK).touch()
    (other / rundir.LOCK).touch()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with rundir.run_directory() as running:
        assert abandoned.exists() is False
        assert rundir.remove_abandoned(tmp_path) == []  # the running one's lock is held
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
            [running.name, being_made.name, "other"]
        )
    assert not running.exists()
