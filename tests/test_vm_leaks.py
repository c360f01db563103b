"""Twenty boots in a row, some cancelled while booting and some while a command runs,
and the command line interrupted (Ctrl-C, SIGTERM, SIGKILL): after each, nothing of
the VM is left (no QEMU, no socket or directory of its own, no mount, no open file).
The launcher's temporary directory is the test's own: other VMs on the machine do not
count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from agent.host.vm import VmConfig, boot_vm
from agent.host.vm.rundir import remove_abandoned
from tests.support.vm import children, private_tempdir, vm_directories

pytestmark = [pytest.mark.vm, pytest.mark.slow]
# Where to cancel a boot, in seconds from its start: while the launcher prepares,
# while QEMU starts, while the kernel boots, the init runs, the agent starts.
BOOT_CANCELS = (0.0, 0.05, 0.3, 1.0, 2.0, 4.0, 8.0, 15.0)
PLAN = (
    *(("boot", delay) for delay in BOOT_CANCELS),
    *(("command", 0.5) for _ in range(6)),
    *(("complete", 0.0) for _ in range(6)),
)
CLI = [sys.executable, "-m", "agent.host.vm.cli", "run", "-q"]


@dataclass(frozen=True)
class Traces:
    """What a VM would leave behind in this process and this machine."""

    children: frozenset[int]
    directories: frozenset[str]
    fds: int
    mounts: str

    @classmethod
    def now(cls, tmp: Path) -> Traces:
        return cls(children(os.getpid()), vm_directories(tmp), _open_fds(), _mounts())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mounts() -> str:
    """Mounts of ours (the launcher makes none on the host; others' come and go)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return "\n".join(line for line in lines if "trio-qga-vm" in line)


async def one(kind: str, delay: float) -> str:
    """One boot as ``kind`` says; what happened."""
    config = VmConfig(boot_timeout=600)
    if kind == "boot":
        with trio.move_on_after(delay) as waited:
            async with boot_vm(config):
                return "booted before the cancel"
        return "cancelled while booting" if waited.cancelled_caught else "?"
    async with boot_vm(config) as vm:
        if kind == "command":
            with trio.move_on_after(delay) as waited:
                await vm.run(["sleep", "100"])
            assert waited.cancelled_caught
            return "cancelled while the command ran"
        assert (await vm.run(["true"])).shell_status == 0
    return "ran and ended"


@pytest.fixture
def tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return private_tempdir(monkeypatch, tmp_path)


async def test_twenty_boots_some_cancelled_leave_nothing_behind(tmp: Path) -> None:
    before = Traces.now(tmp)
    took = []
    for kind, delay in PLAN:
        started = time.monotonic()
        outcome = await one(kind, delay)
        took.append(f"{kind} {delay:g} s: {outcome} in {time.monotonic() - started:.1f} s")
        assert Traces.now(tmp) == before, took[-1]
    print("\n" + "\n".join(took))


@pytest.mark.parametrize(
    ("signal_number", "after_boot", "status"),
    [(signal.SIGINT, False, 130), (signal.SIGTERM, True, 143), (signal.SIGKILL, True, -9)],
    ids=["ctrl-c-while-booting", "sigterm-while-running", "sigkill-while-running"],
)
def test_the_command_line_interrupted_stops_its_vm(
    signal_number: int, after_boot: bool, status: int, tmp: Path, tmp_path: Path
) -> None:
    """Killed outright, it cannot clean up: QEMU dies with it all the same, and the
    next boot removes the directory it left (``rundir``)."""
    marker = tmp_path / "running"  # written through the share once the program runs
    script = f"touch {marker}; sleep 100"
    cli = subprocess.Popen([*CLI, "--rw", str(tmp_path), "--", "sh", "-c", script])
    deadline = time.monotonic() + 600
    qemu: set[int] = set()
    while not qemu or (after_boot and not marker.exists()):
        qemu |= children(cli.pid)
        assert cli.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cli.send_signal(signal_number)
    assert cli.wait(60) == status
    gone = time.monotonic() + 10  # SIGKILL: the kernel kills QEMU (PR_SET_PDEATHSIG)
    while any(Path(f"/proc/{pid}").exists() for pid in qemu):
        assert time.monotonic() < gone, f"QEMU {qemu} still runs"
        time.sleep(0.05)
    if signal_number == signal.SIGKILL:
        [left] = vm_directories(tmp)
        assert remove_abandoned(tmp) == [tmp / left]
    assert vm_directories(tmp) == set()
