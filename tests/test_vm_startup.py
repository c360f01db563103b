"""How long a host waits, from starting QEMU, for the agent's first answer on the
virtio-serial port: trio-qga and qemu-ga each alone in a freshly booted VM
(``../shared/vm/run-in-vm``), started the way a guest starts them (trio-qga's
installed command, its bytecode compiled beforehand as an install does). The
stack's floor is measured the same way: ``benchmarks/stack_floor.py``, a bare
server on trio (and importing pydantic) answering on the port, what any agent
on this stack pays. trio-qga boots twice: the first boot after an install
finds no plugin record and discovers its plugins, and leaves the record in its
cache directory (a host directory the guest writes through, as a guest's
/var/cache survives its reboots); the second is every later boot. The
figures are printed (``-s`` or ``-rA`` shows them), not asserted: under TCG
on a shared host they say how the agents compare, not how fast a guest is."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.reference import qemu_ga_binary
from tests.support.vm import BOOT_DEADLINE, PORTS, ROOT, HostEnd, installed_agent, run_in_vm_script

pytestmark = [pytest.mark.vm, pytest.mark.slow]

FLOOR_SERVER = ROOT / "benchmarks" / "stack_floor.py"


def agent_argv(agent: str, state: Path) -> list[str]:
    options = ["-m", "virtio-serial", "-p", PORTS["virtio"], "-t", str(state)]
    if agent == "qemu-ga":
        return [qemu_ga_binary(), *options, "-f", str(state / "qemu-ga.pid")]
    return [sys.executable, str(FLOOR_SERVER), f"virtio-serial:{PORTS['virtio']}"]


@pytest.mark.parametrize(
    "agent", [pytest.param("qemu-ga", marks=pytest.mark.qemu_ga), "stack floor"]
)
def test_first_answer_after_qemu_starts(agent: str, tmp_path: Path) -> None:
    answered = first_answer(agent_argv(agent, tmp_path), tmp_path)
    print(f"\n{agent}: first answer {answered:.1f} s after QEMU started (virtio-serial, TCG)")


def test_trio_qga_first_answer_on_the_first_and_later_boots(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    argv = [
        *installed_agent(),
        *("-m", "virtio-serial", "-p", PORTS["virtio"], "-t", str(tmp_path)),
        *("-f", str(tmp_path / "trio-qga.pid"), "--cache-dir", str(cache)),
    ]
    first = first_answer(argv, tmp_path, shared=cache)
    assert (cache / "plugins.json").is_file()  # left by the first boot
    later = first_answer(argv, tmp_path, shared=cache)
    print(
        f"\ntrio-qga: first answer {first:.1f} s after QEMU started on the first boot"
        f" after an install, {later:.1f} s on later boots (virtio-serial, TCG)"
    )


def first_answer(argv: list[str], tmp_path: Path, shared: Path | None = None) -> float:
    """Seconds from starting QEMU, with ``argv`` run in the guest, to its first
    answer on the virtio-serial port; ``shared`` is a host directory the guest
    may write."""
    script = run_in_vm_script()
    setup = subprocess.run([script, "--setup"], capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stderr
    sock = tmp_path / "virtio.sock"
    sock.unlink(missing_ok=True)
    command = [str(script), "--qga-socket", str(sock), "--timeout", "600", "-q"]
    if shared is not None:
        command += ["--rw", str(shared)]
    with open(tmp_path / "run-in-vm.out", "ab") as output:
        started = time.monotonic()
        vm = subprocess.Popen(
            [*command, "--", *argv],
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
    return answered
