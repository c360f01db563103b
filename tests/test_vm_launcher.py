"""The VM launcher, booting real VMs: what ``boot_vm``, the ``qga_vm`` fixture and
``trio-qga-vm`` promise.

Most checks share the session's default VM (``qga_vm``, as any suite would); those
about booting itself (two at once, a guest that does not boot, an agent that never
answers, the command line) boot their own. Under TCG a boot takes seconds: the
tests say how long things took, they do not assert it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from agent.host.execution import Chunk
from agent.host.vm import BootFailed, GuestCommandFailed, VmConfig, VmTimeout, boot_vm
from agent.host.vm.background import BackgroundVm
from tests.support.vm import children, private_tempdir, vm_directories

pytestmark = pytest.mark.vm


def test_a_program_runs_in_the_guest_with_its_output_and_status(qga_vm: BackgroundVm) -> None:
    result = qga_vm.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.stdout, result.stderr, result.shell_status) == (b"out\n", b"err\n", 3)
    with pytest.raises(GuestCommandFailed, match="status 4"):
        qga_vm.run(["sh", "-c", "exit 4"])


def test_the_guest_is_this_machine_under_another_kernel(qga_vm: BackgroundVm) -> None:
    uname = qga_vm.run(["uname", "-n", "-r"]).stdout.decode().split()
    assert uname[0] == "trio-qga-vm"
    assert uname[1] == qga_vm.vm.kernel.version
    # The same files (this very test), seen read-only under an overlay the guest writes.
    assert qga_vm.read_file(__file__) == Path(__file__).read_bytes()
    marker = f"/tmp/trio-qga-vm-test-{os.getpid()}"
    qga_vm.run(["sh", "-c", f"echo guest > {marker}"])
    assert qga_vm.read_file(marker) == b"guest\n"
    assert not Path(marker).exists()  # the host never sees the guest's writes
    assert qga_vm.run(["cat", "/proc/1/comm"]).stdout.strip() == b"init"  # busybox's
    mounts = qga_vm.run(["cat", "/proc/mounts"]).stdout.decode()
    assert "overlay / overlay" in mounts


def test_directory_environment_and_input(qga_vm: BackgroundVm, tmp_path: Path) -> None:
    result = qga_vm.run(
        ["sh", "-c", 'pwd; echo "$GREETING"; cat'],
        cwd="/usr/share",
        env=["GREETING=hello there"],
        stdin=b"from the host\n",
    )
    assert result.stdout == b"/usr/share\nhello there\nfrom the host\n"


def test_files_go_in_and_out(qga_vm: BackgroundVm, tmp_path: Path) -> None:
    local = tmp_path / "in.bin"
    local.write_bytes(os.urandom(300_000))
    assert qga_vm.put_file(local, "/run/in.bin") == 300_000
    assert qga_vm.run(["wc", "-c", "/run/in.bin"]).stdout.split()[0] == b"300000"
    assert qga_vm.get_file("/run/in.bin", tmp_path / "out.bin") == 300_000
    assert (tmp_path / "out.bin").read_bytes() == local.read_bytes()


async def test_async_tests_connect_in_their_own_loop(qga_vm: BackgroundVm) -> None:
    async with qga_vm.connect() as guest:
        chunks: list[Chunk] = []
        script = "echo one; sleep 0.3; echo two"
        result = await guest.run(["sh", "-c", script], output=chunks.append)
        assert [chunk.data for chunk in chunks] == [b"one\n", b"two\n"]  # as they came
        assert result.stdout == b"one\ntwo\n"


@pytest.fixture
def tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return private_tempdir(monkeypatch, tmp_path)


async def test_two_vms_at_once_each_with_its_own_sockets(tmp: Path) -> None:
    names: dict[str, str] = {}
    paths: dict[str, Path] = {}

    async def one(name: str) -> None:
        async with boot_vm(VmConfig(hostname=name, cpus=1)) as vm:
            paths[name] = vm.qga_socket
            result = await vm.run(["uname", "-n"])
            names[name] = result.stdout.decode().strip()

    async with trio.open_nursery() as nursery:
        for name in ("first", "second"):
            nursery.start_soon(one, name)
    assert names == {"first": "first", "second": "second"}
    assert paths["first"] != paths["second"]
    assert not any(path.exists() for path in paths.values())
    assert vm_directories(tmp) == set()


async def test_a_guest_that_does_not_boot_says_why(tmp: Path) -> None:
    with pytest.raises(BootFailed, match=r"(?s)before its agent answered.*Kernel panic"):
        async with boot_vm(VmConfig(append="rdinit=/no/such/init", cpus=1)):
            pytest.fail("booted")
    assert vm_directories(tmp) == set()


async def test_an_agent_that_never_answers_is_stopped_at_the_boot_timeout(tmp: Path) -> None:
    before = children(os.getpid())
    config = VmConfig(agent=("sleep", "1000"), boot_timeout=20, cpus=1)
    with pytest.raises(VmTimeout, match="did not answer within 20 s") as timeout:
        async with boot_vm(config):
            pytest.fail("answered")
    assert "trio-qga-vm: agent" in str(timeout.value)  # the console's last lines
    assert vm_directories(tmp) == set()
    assert children(os.getpid()) <= before  # QEMU is gone


def virtiofsd_children(before: frozenset[int]) -> set[int]:
    """Our virtiofsd processes that were not there ``before``."""
    new = children(os.getpid()) - before
    return {pid for pid in new if Path(f"/proc/{pid}/exe").resolve().name == "virtiofsd"}


async def test_a_virtiofs_root_boots_read_only_and_leaves_nothing(
    tmp: Path, tmp_path: Path
) -> None:
    """The root over virtiofs: the guest runs programs on it, a guest that mounts it
    again read-write still cannot change this machine's files (virtiofsd's view is
    read-only), and virtiofsd is stopped with the VM."""
    before = children(os.getpid())
    escaped = tmp_path / "escaped"
    script = (
        "grep '^virtiofs ' /proc/modules; mkdir /run/again"
        " && mount -t virtiofs root /run/again && mount -o remount,rw /run/again"
        f" && touch /run/again{escaped}"
    )
    async with boot_vm(VmConfig(root_fs="virtiofs", cpus=1)) as vm:
        assert vm.config.root_fs == "virtiofs"
        assert len(virtiofsd_children(before)) == 1
        result = await vm.run(["sh", "-c", script])
        assert result.stdout.startswith(b"virtiofs ")  # loaded, and in use
        assert b"Read-only file system" in result.stderr, result.stderr
        assert result.shell_status != 0
        assert (await vm.run(["cat", "/etc/hostname"])).stdout == b"trio-qga-vm\n"
    assert not escaped.exists()
    assert children(os.getpid()) <= before  # QEMU and virtiofsd are gone
    assert vm_directories(tmp) == set()


def test_the_command_line_runs_a_program_and_exits_with_its_status() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.host.vm.cli",
            "run",
            "-q",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
