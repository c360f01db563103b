"""A fleet across two hosts: trio-qga-client against the shell loops an operator would write.

    sudo .venv/bin/python benchmarks/bench_fleet.py [--rounds N]

It boots what ``tests/test_fleet_hosts.py`` boots (``tests/support/fleet_hosts.py``: two
libvirt daemons of our own, host a with a qemu-ga and a trio-qga domain, host b with a
trio-qga domain; TCG; a few minutes), then, rounds alternating which goes first:

- ``info`` on every domain: ``trio-qga-client --inventory FILE --json info`` against
  ``virsh -c URI qemu-agent-command DOMAIN '{"execute":"guest-info"}'`` for each domain,
  one after the other (a loop) and all at once (``&`` then ``wait``);
- a freeze of every domain's scratch disk with nothing run while frozen:
  ``fsfreeze freeze-thaw --run true MOUNTPOINT`` against ``virsh domfsfreeze
  --mountpoint MOUNTPOINT`` for each domain, then ``virsh domfsthaw`` for each, a loop
  and all at once. The window is from the first freeze sent to the last thaw answered:
  the client's summary gives it; for the shell, the time around its freezes and thaws.

Wall times include starting each program (the client's Python, each virsh); the
client's own time for ``info`` (its summary's) is shown too: the shell's are the virsh
runs themselves. The trio-qga guests run without the test's fsfreeze hook. A round of
each, untimed, warms the guests up first. Figures are medians, with ratios; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fleet_hosts import SCRATCH, Fleet, two_hosts  # noqa: E402
from tests.support.reference import qemu_ga_binary  # noqa: E402

CLIENT = [sys.executable, "-m", "agent.host.cli"]
TIMEOUT = 300.0
INFO = json.dumps({"execute": "guest-info"})
KINDS = ("client", "loop", "background")


def _shell(fleet: Fleet, virsh: str, *args: str, parallel: bool) -> str:
    """``virsh -c URI VIRSH DOMAIN ARGS`` for every domain, its output dropped."""
    commands = [
        shlex.join(["virsh", "-c", d.host.uri, virsh, d.domain.name, *args]) + " > /dev/null"
        for d in fleet.domains
    ]
    if parallel:
        return " & ".join(commands) + " & wait"
    return " && ".join(commands)


def _run(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]}...: {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def info(fleet: Fleet, inventory: Path, kind: str) -> tuple[float, float | None]:
    """Wall seconds of ``guest-info`` on every domain, and for the client its own
    (its summary's: without starting Python)."""
    if kind == "client":
        seconds, out = _run([*CLIENT, "--inventory", str(inventory), "--json", "info"])
        return seconds, float(json.loads(out.splitlines()[-1])["summary"]["seconds"])
    script = _shell(fleet, "qemu-agent-command", INFO, parallel=kind == "background")
    return _run(["sh", "-c", script])[0], None


def freeze(fleet: Fleet, inventory: Path, kind: str) -> tuple[float, float]:
    """Wall seconds, and the window (first freeze sent to last thaw answered)."""
    if kind == "client":
        argv = [*CLIENT, "--inventory", str(inventory), "--json", "fsfreeze", "freeze-thaw"]
        seconds, out = _run([*argv, "--run", "true", SCRATCH])
        *lines, summary = (json.loads(line) for line in out.splitlines())
        if not summary["summary"]["all_frozen"] or summary["summary"]["failed"]:
            raise RuntimeError(f"the client's freeze failed: {out}")
        each = ", ".join(f"{line['target']} {line['return']['window']:.2f}" for line in lines)
        print(f"  client's windows: {each}", flush=True)
        return seconds, float(summary["summary"]["window"])
    parallel = kind == "background"
    freezes = _shell(fleet, "domfsfreeze", "--mountpoint", SCRATCH, parallel=parallel)
    thaws = _shell(fleet, "domfsthaw", parallel=parallel)
    script = f"date +%s.%N; {freezes}; true; {thaws}; date +%s.%N"
    seconds, out = _run(["sh", "-c", script])
    first, last = (float(line) for line in out.split())
    return seconds, last - first


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(figures: dict[str, dict[str, list[float]]], rounds: int) -> str:
    rows = [
        ("info, wall", "info"),
        ("info, in-process", "info-in"),
        ("freeze-thaw, wall", "freeze"),
        ("freeze window", "window"),
    ]
    lines = [
        f"3 domains on 2 hosts (TCG), medians of {rounds} rounds, seconds",
        f"{'':20} {'client':>8} {'loop':>8} {'bg jobs':>8} {'client/loop':>12} {'client/bg':>10}",
    ]
    for title, key in rows:
        found = {kind: median(figures[key][kind]) for kind in KINDS}
        client, loop, background = (found[kind] for kind in KINDS)
        lines.append(
            f"{title:20} {client:8.2f} {loop:8.2f} {background:8.2f}"
            f" {client / loop:11.2f}x {client / background:9.2f}x"
        )
    return "\n".join(lines)


def measure(fleet: Fleet, inventory: Path, rounds: int) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {
        key: {kind: [] for kind in KINDS} for key in ("info", "info-in", "freeze", "window")
    }
    for kind in KINDS:  # warm-up: the guests' first freeze is slow (imports, page cache)
        info(fleet, inventory, kind)
        freeze(fleet, inventory, kind)
    for round_ in range(rounds):
        order = KINDS if round_ % 2 == 0 else KINDS[::-1]
        for kind in order:
            wall, own = info(fleet, inventory, kind)
            figures["info"][kind].append(wall)
            figures["info-in"][kind].append(wall if own is None else own)  # a shell: its wall
            seconds, window = freeze(fleet, inventory, kind)
            figures["freeze"][kind].append(seconds)
            figures["window"][kind].append(window)
            print(
                f"round {round_ + 1} {kind:10}: info {figures['info'][kind][-1]:.2f} s,"
                f" freeze-thaw {seconds:.2f} s, window {window:.2f} s",
                flush=True,
            )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        base = Path(tmp)
        with two_hosts(base, qemu_ga_binary(), hook=False) as fleet:
            inventory = fleet.inventory(base / "inventory")
            figures = measure(fleet, inventory, args.rounds)
    print(table(figures, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
