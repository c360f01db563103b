"""The agent's own start inside a TCG guest, beside the stack's floor, in one boot.

    .venv/bin/python -m benchmarks.bench_vm_agent_start [--rounds N] [--base REV]

Issue 27's measure: in one VM of the project's launcher (this machine's root
over 9p), from the spawn of a server to its first reply to
``guest-sync-delimited`` on a unix socket in the guest, alternating in rounds
(the order rotating) after one unmeasured start of each, so that every start
finds its files in the guest's page cache:

- the floor: ``benchmarks/stack_floor.py``, a bare Trio server (it imports trio
  and pydantic and answers with the standard library's json);
- trio-qga, ``python -m agent`` of the working tree, as a guest starts it;
- with ``--base REV``, the same of a git revision too (its ``agent`` package
  from ``git archive``, first on ``PYTHONPATH``, compiled beforehand).

It prints the medians and each round's difference to the floor. Under TCG the
time is emulated CPU: the difference is what the agent's own start costs.
"""

from __future__ import annotations

import argparse
import compileall
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import trio

from agent.host.vm import VmConfig, boot_vm
from benchmarks.guest_start import AGENT, Server, timed_start

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "benchmarks" / "stack_floor.py"


def servers(base: Path | None) -> dict[str, Server]:
    """Each contender's command ("{path}": the socket's) and environment."""
    found: dict[str, Server] = {
        "floor": ((sys.executable, str(FLOOR), "unix-listen:{path}"), {}),
        "trio-qga": (AGENT, {}),
    }
    if base is not None:
        found["base"] = (AGENT, {"PYTHONPATH": str(base)})
    return found


def checkout(rev: str, into: Path) -> Path:
    """The ``agent`` package of ``rev``, compiled, under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "agent"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    compileall.compile_dir(into / "agent", quiet=1)
    return into


async def measure(rounds: int, base: Path | None) -> dict[str, list[float]]:
    contenders = servers(base)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    async with boot_vm(VmConfig()) as vm:

        async def start(name: str) -> float:
            result = await vm.run(timed_start(contenders[name]), check=True)
            return float(result.stdout)

        for name in contenders:
            await start(name)  # its files read once: not measured
        names = list(contenders)
        for round_number in range(rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(await start(name))
            print(
                f"round {round_number + 1}: "
                + ", ".join(f"{name} {values[-1]:.2f}" for name, values in times.items()),
                flush=True,
            )
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--base", help="a git revision to measure beside the working tree")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-start.", dir="/tmp") as scratch:
        base = checkout(args.base, Path(scratch)) if args.base else None
        times = trio.run(measure, args.rounds, base)
    floor = times["floor"]
    report = {
        "medians (s)": {name: round(statistics.median(v), 2) for name, v in times.items()},
        "median of each round's difference to the floor (s)": {
            name: round(statistics.median(v - f for v, f in zip(values, floor, strict=True)), 2)
            for name, values in times.items()
            if name != "floor"
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
