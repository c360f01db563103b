"""fsfreeze benchmark: freeze-list + thaw on scratch ext4 and xfs, trio-qga beside qemu-ga.

    sudo .venv/bin/python benchmarks/bench_fsfreeze.py [--rounds N] [--pause S]

Needs root: it mounts its own scratch images on loop devices (as the tests
do, ``tests/support/scratch.py``) and removes them at the end. Both agents are only
ever asked to freeze those two mountpoints, by name; ours also gets a mount
table listing only the scratch mounts and the ``TRIO_QGA_FREEZE_ALLOW`` guard.
Rounds alternate between the agents so that machine noise hits both.

Two regimes, because the kernel's cost of a FIFREEZE depends on how long ago
the last one was. Linux's ``freeze_super`` waits for an RCU grace period
unless a freeze of the same filesystem happened within about 20 ms: a freeze
then costs 20 to 30 ms per filesystem here, against 0.5 ms back to back.

- *As a host freezes*: a pause (``--pause``, 0.2 s) before every freeze, as
  between a host's backups. What a host waits for; the kernel's share is
  most of it, and noisy.
- *Back to back*: each agent's freeze follows the other's thaw at once, so
  both find the kernel's fast path: what is left is each agent's own cost.

The first freeze is reported apart (after a pause, for both): trio-qga starts
its watchdog process then.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.system.fsfreeze.ioctl import ALLOW_ENV  # noqa: E402
from tests.support.clients import SocketClient  # noqa: E402
from tests.support.processes import running_agent  # noqa: E402
from tests.support.reference import running_qemu_ga  # noqa: E402
from tests.support.scratch import mount_scratch, unmount_scratch  # noqa: E402


def timed(client: SocketClient, name: str, arguments: dict[str, object] | None = None) -> float:
    start = time.perf_counter()
    reply = client.execute(name, arguments)
    elapsed = time.perf_counter() - start
    assert "return" in reply, reply
    return elapsed


Times = dict[str, dict[str, list[float]]]  # agent -> row -> seconds per round

ROWS = (
    "first freeze",
    "freeze, as a host freezes",
    "thaw, as a host freezes",
    "freeze, back to back",
    "thaw, back to back",
)


def measure(
    clients: dict[str, SocketClient], arguments: dict[str, object], rounds: int, pause: float
) -> Times:
    times: Times = {name: {row: [] for row in ROWS} for name in clients}

    def freeze_and_thaw(name: str, regime: str | None) -> None:
        freeze = timed(clients[name], "guest-fsfreeze-freeze-list", arguments)
        thaw = timed(clients[name], "guest-fsfreeze-thaw")
        if regime is None:
            times[name]["first freeze"].append(freeze)
        else:
            times[name][f"freeze, {regime}"].append(freeze)
            times[name][f"thaw, {regime}"].append(thaw)

    for name in clients:
        time.sleep(pause)
        freeze_and_thaw(name, None)
    for _ in range(rounds):
        for name in clients:
            time.sleep(pause)
            freeze_and_thaw(name, "as a host freezes")
    for _ in range(rounds):
        for name in clients:
            freeze_and_thaw(name, "back to back")
    return times


def report(times: Times) -> None:
    for row in ROWS:
        for name, by_row in times.items():
            values = sorted(by_row[row])
            p90 = values[max(0, int(len(values) * 0.9) - 1)]
            print(
                f"  {row:26} {name:8} {statistics.median(values) * 1e3:7.2f} ms"
                f" ({p90 * 1e3:.2f} ms)"
            )
        ratios = [
            ours / theirs
            for ours, theirs in zip(times["trio-qga"][row], times["qemu-ga"][row], strict=True)
        ]
        print(
            f"  {row:26} ratio    {statistics.median(ratios):7.2f}x"
            f" ({min(ratios):.2f}-{max(ratios):.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30, help="rounds per regime (default 30)")
    parser.add_argument(
        "--pause", type=float, default=0.2, help="seconds before each freeze as a host freezes"
    )
    args = parser.parse_args()
    os.chdir(ROOT)  # `python -m agent` must find this checkout
    with tempfile.TemporaryDirectory(prefix="bench-fsfreeze-") as tmp:
        base = Path(tmp)
        (base / "scratch").mkdir()
        scratch = mount_scratch(base / "scratch")
        os.environ[ALLOW_ENV] = os.pathsep.join(map(str, scratch.mounts))
        arguments: dict[str, object] = {"mountpoints": [str(scratch.xfs), str(scratch.ext4)]}
        try:
            with (
                running_qemu_ga(base / "qemu-ga") as theirs_sock,
                running_agent(base, "--mount-table", str(scratch.mount_table)) as (_, ours_sock),
            ):
                clients = {
                    "trio-qga": SocketClient(ours_sock),
                    "qemu-ga": SocketClient(theirs_sock),
                }
                times = measure(clients, arguments, args.rounds, args.pause)
                for client in clients.values():
                    client.close()
        finally:
            unmount_scratch(scratch)
    print(
        f"freeze-list of 2 filesystems (xfs, ext4) then thaw, {args.rounds} rounds per regime"
        f" ({args.pause:g} s before each freeze as a host freezes); median (p90);"
        " ratio trio-qga / qemu-ga per round: median (range)"
    )
    report(times)


if __name__ == "__main__":
    main()
