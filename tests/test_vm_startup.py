"""How long a host waits, from starting QEMU, for the agent's first answer on the
virtio-serial port: trio-qga and qemu-ga each alone in a freshly booted VM (the
launcher's, with the agent as the guest's own: ``VmConfig(agent=...)``), started
the way a guest starts them (trio-qga's installed command, its bytecode compiled
beforehand as an install does). The stack's floor is measured the same way:
``benchmarks/stack_floor.py``, a bare server on trio (and importing pydantic)
answering on the port, what any agent on this stack pays. trio-qga boots twice:
the first boot after an install finds no plugin record and discovers its
plugins, and leaves the record in its cache directory (a host directory the
guest writes through, as a guest's /var/cache survives its reboots); the second
is every later boot. The figures are printed (``-s`` or ``-rA`` shows them), not
asserted: under TCG on a shared host they say how the agents compare, not how
fast a guest is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from agent.host.vm import VmConfig, boot_vm
from tests.reference import qemu_ga_binary
from tests.test_vm import PORTS, ROOT, installed_agent

pytestmark = pytest.mark.vm
FLOOR_SERVER = ROOT / "benchmarks" / "stack_floor.py"


def agent_argv(agent: str) -> tuple[str, ...]:
    if agent == "qemu-ga":
        options = ("-m", "virtio-serial", "-p", PORTS["virtio"], "-t", "/run")
        return (qemu_ga_binary(), *options, "-f", "/run/qemu-ga.pid")
    return (sys.executable, str(FLOOR_SERVER), f"virtio-serial:{PORTS['virtio']}")


@pytest.mark.parametrize("agent", ["qemu-ga", "stack floor"])
def test_first_answer_after_qemu_starts(agent: str) -> None:
    answered = first_answer(VmConfig(agent=agent_argv(agent)))
    print(f"\n{agent}: first answer {answered:.1f} s after QEMU started (virtio-serial, TCG)")


def test_trio_qga_first_answer_on_the_first_and_later_boots(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    argv = (
        *installed_agent(),
        *("-m", "virtio-serial", "-p", PORTS["virtio"], "-t", "/run"),
        *("-f", "/run/trio-qga.pid", "--cache-dir", str(cache)),
    )
    config = VmConfig(agent=argv, shares=(cache,))
    first = first_answer(config)
    assert (cache / "plugins.json").is_file()  # left by the first boot
    later = first_answer(config)
    print(
        f"\ntrio-qga: first answer {first:.1f} s after QEMU started on the first boot"
        f" after an install, {later:.1f} s on later boots (virtio-serial, TCG)"
    )


def first_answer(config: VmConfig) -> float:
    """Seconds from starting QEMU to the first answer of the guest's agent."""

    async def boot() -> float:
        async with boot_vm(config) as vm:
            await vm.client.ping()
            assert vm.timings is not None
            return vm.timings.total

    return trio.run(boot)
