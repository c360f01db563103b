"""Twenty boots in a row, some cancelled while booting and some while a command runs,
and the command line interrupted both ways: after each, nothing of the VM is left
(no QEMU, no socket or directory of its own, no mount, no open file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from agent.host.vm import VmConfig, boot_vm

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
    def now(cls) -> Traces:
        return cls(_children(os.getpid()), _run_directories(), _open_fds(), _mounts())


def _children(pid: int) -> frozenset[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as children:
            found.update(int(child) for child in children.read().split())
    return frozenset(found)


def _run_directories() -> frozenset[str]:
    return frozenset(
        name for name in os.listdir(tempfile.gettempdir()) if name.startswith("trio-qga-vm.")
    )


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


async def test_twenty_boots_some_cancelled_leave_nothing_behind() -> None:
    before = Traces.now()
    took = []
    for kind, delay in PLAN:
        started = time.monotonic()
        outcome = await one(kind, delay)
        took.append(f"{kind} {delay:g} s: {outcome} in {time.monotonic() - started:.1f} s")
        assert Traces.now() == before, took[-1]
    print("\n" + "\n".join(took))


@pytest.mark.parametrize(
    ("signal_number", "after_boot", "status"),
    [(signal.SIGINT, False, 130), (signal.SIGTERM, True, 143)],
    ids=["ctrl-c-while-booting", "sigterm-while-running"],
)
def test_the_command_line_interrupted_stops_its_vm(
    signal_number: int, after_boot: bool, status: int, tmp_path: Path
) -> None:
    before = _run_directories()
    marker = tmp_path / "running"  # written through the share once the program runs
    script = f"touch {marker}; sleep 100"
    cli = subprocess.Popen([*CLI, "--rw", str(tmp_path), "--", "sh", "-c", script])
    deadline = time.monotonic() + 600
    qemu: set[int] = set()
    while not qemu or (after_boot and not marker.exists()):
        qemu |= _children(cli.pid)
        assert cli.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cli.send_signal(signal_number)
    assert cli.wait(60) == status
    for pid in qemu:
        assert not Path(f"/proc/{pid}").exists(), f"QEMU {pid} still runs"
    assert _run_directories() == before
