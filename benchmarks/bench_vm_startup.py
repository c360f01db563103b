"""VM start-up benchmark: how long a host waits, from starting QEMU, for the agent's
first answer on the virtio-serial port.

    .venv/bin/python -m benchmarks.bench_vm_startup [--rounds N]

trio-qga and qemu-ga each alone in a freshly booted VM (the project's launcher,
``agent.host.vm``, with the agent as the guest's own: ``VmConfig(agent=...)``; TCG
when KVM does not work), started the way a guest starts them (trio-qga's installed
command, its bytecode compiled beforehand as an install does). The stack's floor is
measured the same way: ``benchmarks/stack_floor.py``, a bare server on trio (and
importing pydantic) answering on the port, what any agent on this stack pays.
trio-qga keeps its cache directory in a host directory the guest writes through,
as a guest's /var/cache survives its reboots. Since its plugins are found and
imported only when a request needs them (6b50e40), a first boot after an install
and a later one start the same way before the first answer: one trio-qga row
(there were two). Each round boots them all in turn, so that machine noise hits
all of them. Under TCG on a shared host the figures say how the agents
compare, not how fast a guest is: read the ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import trio

from agent.host.vm import VmConfig, boot_vm
from tests.support.vm import PORTS, ROOT, installed_agent

FLOOR_SERVER = ROOT / "benchmarks" / "stack_floor.py"
QEMU_GA = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
ROWS = ("qemu-ga", "stack floor", "trio-qga")
PORT = ("-m", "virtio-serial", "-p", PORTS["virtio"], "-t", "/run")


def first_answer(argv: list[str], shared: Path | None = None) -> float:
    """Seconds from starting QEMU, with ``argv`` as the guest's agent, to its first
    answer on the virtio-serial port; ``shared`` is a host directory the guest
    may write."""
    config = VmConfig(agent=tuple(argv), shares=() if shared is None else (shared,))

    async def boot() -> float:
        async with boot_vm(config) as vm:
            await vm.client.ping()
            if vm.timings is None:
                raise RuntimeError("the guest's console did not show its boot's steps")
            return vm.timings.total

    return trio.run(boot)


def one_round(workdir: Path) -> dict[str, float]:
    """Each row's first answer, once."""
    figures = {
        "qemu-ga": first_answer([QEMU_GA, *PORT, "-f", "/run/qemu-ga.pid"]),
        "stack floor": first_answer(
            [sys.executable, str(FLOOR_SERVER), f"virtio-serial:{PORTS['virtio']}"]
        ),
    }
    cache = workdir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()
    trio_qga = [*installed_agent(), *PORT, "-f", "/run/trio-qga.pid", "--cache-dir", str(cache)]
    figures["trio-qga"] = first_answer(trio_qga, shared=cache)
    return figures


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds (default 1: 3 VM boots)")
    args = parser.parse_args()
    if not Path(QEMU_GA).is_file():
        sys.exit(f"bench_vm_startup: qemu-ga not found at {QEMU_GA}")
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-vm-startup-") as tmp:
        for _ in range(args.rounds):
            rounds.append(one_round(Path(tmp)))
    print(f"{'first answer after QEMU starts (s)':40} {'median (range)':>20} {'/qemu-ga':>9}")
    for row in ROWS:
        ratios = [r[row] / r["qemu-ga"] for r in rounds]
        print(f"{row:40} {spread([r[row] for r in rounds]):>20} {spread(ratios):>8}x")
    print(f"(virtio-serial, {args.rounds} round(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
