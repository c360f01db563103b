"""fsfreeze benchmark: freeze-list + thaw on scratch ext4 and xfs, trio-qga beside qemu-ga.

    sudo .venv/bin/python benchmarks/bench_fsfreeze.py [--rounds N]

Needs root: it mounts its own scratch images on loop devices (as the tests
do, ``tests/scratch.py``) and removes them at the end. Both agents are only
ever asked to freeze those two mountpoints, by name; ours also gets a mount
table listing only the scratch mounts and the ``TRIO_QGA_FREEZE_ALLOW`` guard.
Rounds alternate between the agents so that machine noise hits both. The
first freeze is reported apart: trio-qga starts its watchdog process then.
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

from agent.fsfreeze.ioctl import ALLOW_ENV  # noqa: E402
from tests.qga_client import SocketClient, running_agent  # noqa: E402
from tests.reference import running_qemu_ga  # noqa: E402
from tests.scratch import mount_scratch, unmount_scratch  # noqa: E402


def timed(client: SocketClient, name: str, arguments: dict[str, object] | None = None) -> float:
    start = time.perf_counter()
    reply = client.execute(name, arguments)
    elapsed = time.perf_counter() - start
    assert "return" in reply, reply
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    os.chdir(ROOT)  # `python -m agent` must find this checkout
    with tempfile.TemporaryDirectory(prefix="bench-fsfreeze-") as tmp:
        base = Path(tmp)
        (base / "scratch").mkdir()
        scratch = mount_scratch(base / "scratch")
        os.environ[ALLOW_ENV] = os.pathsep.join(map(str, scratch.mounts))
        mountpoints: dict[str, object] = {"mountpoints": [str(scratch.xfs), str(scratch.ext4)]}
        times: dict[str, dict[str, list[float]]] = {}
        try:
            with (
                running_qemu_ga(base / "qemu-ga") as theirs_sock,
                running_agent(base, "--mount-table", str(scratch.mount_table)) as (_, ours_sock),
            ):
                clients = {
                    "trio-qga": SocketClient(ours_sock),
                    "qemu-ga": SocketClient(theirs_sock),
                }
                for name in clients:
                    times[name] = {"first freeze": [], "freeze": [], "thaw": []}
                for round_ in range(rounds + 1):
                    for name, client in clients.items():
                        freeze = timed(client, "guest-fsfreeze-freeze-list", mountpoints)
                        times[name]["freeze" if round_ else "first freeze"].append(freeze)
                        times[name]["thaw"].append(timed(client, "guest-fsfreeze-thaw"))
                for client in clients.values():
                    client.close()
        finally:
            unmount_scratch(scratch)
    print(
        f"{rounds} rounds after a first one, freeze-list of 2 filesystems (xfs, ext4) then thaw;"
        " median (p90); ratio trio-qga / qemu-ga per round: median (range)"
    )
    for what in ("first freeze", "freeze", "thaw"):
        for name, by_kind in times.items():
            values = sorted(by_kind[what])
            p90 = values[max(0, int(len(values) * 0.9) - 1)]
            print(
                f"  {what:12} {name:8} {statistics.median(values) * 1e3:7.2f} ms"
                f" ({p90 * 1e3:.2f} ms)"
            )
        ratios = [
            ours / theirs
            for ours, theirs in zip(times["trio-qga"][what], times["qemu-ga"][what], strict=True)
        ]
        print(
            f"  {what:12} ratio    {statistics.median(ratios):7.2f}x"
            f" ({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
