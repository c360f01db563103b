"""How long a host waits, from starting QEMU, for the agent's first answer on the
virtio-serial port: trio-qga and qemu-ga each alone in a freshly booted VM
(``../shared/vm/run-in-vm``), started the way a guest starts them (trio-qga's
installed command, its bytecode compiled beforehand as an install does). The
stack's floor is measured the same way: ``benchmarks/stack_floor.py``, a bare
server on trio (and importing pydantic) answering on the port, what any agent
on this stack pays. The
figures are printed (``-s`` or ``-rA`` shows them), not asserted: under TCG
on a shared host they say how the two compare, not how fast a guest is."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reference import qemu_ga_binary
from tests.test_vm import BOOT_DEADLINE, PORTS, ROOT, HostEnd, installed_agent, run_in_vm_script


def agent_argv(agent: str, state: Path) -> list[str]:
    options = ["-m", "virtio-serial", "-p", PORTS["virtio"], "-t", str(state)]
    if agent == "qemu-ga":
        return [qemu_ga_binary(), *options, "-f", str(state / "qemu-ga.pid")]
    if agent == "stack floor":
        return [sys.executable, str(FLOOR_SERVER), f"virtio-serial:{PORTS['virtio']}"]
    return [*installed_agent(), *options, "-f", str(state / "trio-qga.pid")]


FLOOR_SERVER = ROOT / "benchmarks" / "stack_floor.py"


@pytest.mark.parametrize("agent", ["trio-qga", "qemu-ga", "stack floor"])
def test_first_answer_after_qemu_starts(agent: str, tmp_path: Path) -> None:
    script = run_in_vm_script()
    setup = subprocess.run([script, "--setup"], capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stderr
    sock = tmp_path / "virtio.sock"
    command = [str(script), "--qga-socket", str(sock), "--timeout", "600", "-q", "--"]
    with open(tmp_path / "run-in-vm.out", "wb") as output:
        started = time.monotonic()
        vm = subprocess.Popen(
            [*command, *agent_argv(agent, tmp_path)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            end = HostEnd(sock)
            end.connect(started + BOOT_DEADLINE)
            end.sync(started + BOOT_DEADLINE)
            answered = time.monotonic() - started
            assert end.execute("guest-ping") == {"return": {}}
            end.close()
        finally:
            vm.send_signal(signal.SIGTERM)  # powers the VM off
            vm.wait(60)
    print(f"\n{agent}: first answer {answered:.1f} s after QEMU started (virtio-serial, TCG)")
