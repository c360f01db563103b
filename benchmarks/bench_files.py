"""File transfer benchmark: trio-qga and the real qemu-ga side by side, in one run.

    .venv/bin/python benchmarks/bench_files.py [--size MIB] [--json FILE]

Reads and writes a file (256 MiB by default) through each agent with
guest-file-read / guest-file-write at counts of 4 KiB, 1 MiB and 16 MiB,
sequentially as a host does. Reports MiB/s and the agent's own CPU seconds
per MiB (from /proc/PID/stat), since the Python client's own JSON and base64
work can cap the wall-clock figure; and the agent's peak memory above idle
during a 48 MiB read. Figures are reported as ratios, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.bench_core import (
    AGENTS,
    MIB,
    Agent,
    Client,
    cpu_seconds,
    read_file,
    rss_kib,
    started,
    sync,
    write_file,
)

COUNTS = {"4 KiB": 4096, "1 MiB": MIB, "16 MiB": 16 * MIB}


class FileClient(Client):
    def __init__(self, sock: Path) -> None:
        super().__init__(sock, time.monotonic() + 10)
        sync(self, 7)


@contextlib.contextmanager
def agent_process(agent: Agent, workdir: Path) -> Iterator[tuple[int, FileClient]]:
    with started(agent, workdir) as (proc, sock, _):
        client = FileClient(sock)
        try:
            yield proc.pid, client
        finally:
            client.close()


def transfer(agent: Agent, workdir: Path, source: Path, size: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with agent_process(agent, workdir) as (pid, client):
        for label, count in COUNTS.items():
            for direction in ("read", "write"):
                cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                if direction == "read":
                    moved = read_file(client, source, count)
                else:
                    moved = write_file(client, workdir / f"out-{agent.name}", size, count)
                elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
                mib = moved / MIB
                print(f"  {agent.name} {direction} {label}: {elapsed:.1f} s", file=sys.stderr)
                figures[f"{direction} {label}: MiB/s"] = mib / elapsed
                figures[f"{direction} {label}: agent CPU ms/MiB"] = cpu / mib * 1e3
    return figures


def peak_memory(agent: Agent, workdir: Path, source: Path) -> float:
    """Peak resident memory above idle, in MiB, during one 48 MiB read."""
    with agent_process(agent, workdir) as (pid, client):
        handle = client.call("guest-file-open", path=str(source))
        client.call("guest-file-read", handle=handle, count=10)
        idle = rss_kib(pid)
        client.call("guest-file-read", handle=handle, count=48 * MIB)
        return (rss_kib(pid, "VmHWM") - idle) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    size = args.size * MIB
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        workdir = Path(tmp)
        source = workdir / "source"
        with source.open("wb") as out:
            for _ in range(max(args.size, 49)):
                out.write(os.urandom(MIB))
        for agent in AGENTS:
            results[agent.name] = transfer(agent, workdir, source, size)
            results[agent.name]["peak memory of a 48 MiB read (MiB)"] = peak_memory(
                agent, workdir, source
            )
    ours, theirs = results["trio-qga"], results["qemu-ga"]
    print(f"{args.size} MiB file")
    print(f"{'metric':40} {'trio-qga':>10} {'qemu-ga':>10} {'ours/theirs':>12}")
    for metric, value in ours.items():
        other = theirs[metric]
        print(f"{metric:40} {value:10.1f} {other:10.1f} {value / other:11.2f}x")
    print("(MiB/s: higher is better; CPU and memory: lower is better)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
