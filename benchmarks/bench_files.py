"""File transfer benchmark: trio-qga and the real qemu-ga side by side, in one run.

    .venv/bin/python -m benchmarks.bench_files [--size MIB] [--rounds N] [--json FILE]

Reads and writes a file (256 MiB by default) through each agent with
guest-file-read / guest-file-write at counts of 4 KiB, 1 MiB and 16 MiB,
sequentially as a host does. Reports MiB/s and the agent's own CPU
milliseconds per MiB (from /proc/PID/stat, threads that ended included), since
the Python client's own JSON and base64 work can cap the wall-clock figure; and
the agent's peak memory above idle during a 48 MiB read. The floor server
(``benchmarks/stack_floor.py``) reads files too: it stands beside the read
rows. Rounds alternate between the agents; figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from benchmarks import report
from benchmarks.bench_core import (
    FLOOR_SERVER,
    MIB,
    QEMU_GA,
    Agent,
    Client,
    Rows,
    cpu_seconds,
    in_turn,
    random_file,
    read_file,
    rss_kib,
    started,
    sync,
    trio_qga,
    write_file,
)
from benchmarks.report import Metric

COUNTS = {"4k": 4096, "1m": MIB, "16m": 16 * MIB}
LABELS = {"4k": "4 KiB", "1m": "1 MiB", "16m": "16 MiB"}


def files_metrics() -> list[Metric]:
    """The rows of this benchmark, in the order of its table, nothing measured yet."""
    metrics = []
    for size in COUNTS:
        for direction in ("read", "write"):
            label = f"{direction}, {LABELS[size]} requests"
            metrics += [
                Metric(f"{direction}-{size}", f"{label} (MiB/s)", higher_is_better=True),
                Metric(f"{direction}-{size}-cpu", f"{label}: agent CPU per MiB (ms)"),
            ]
    return [*metrics, Metric("peak-48m", "peak memory above idle, one 48 MiB read (MiB)")]


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


def transfer(
    agent: Agent, workdir: Path, source: Path, size: int, rows: Rows, directions: list[str]
) -> None:
    with agent_process(agent, workdir) as (pid, client):
        for label, count in COUNTS.items():
            for direction in directions:
                if not rows.keys() & {f"{direction}-{label}", f"{direction}-{label}-cpu"}:
                    continue
                cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                if direction == "read":
                    moved = read_file(client, source, count)
                else:
                    moved = write_file(client, workdir / agent.name / "written", size, count)
                elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
                mib = moved / MIB
                rows.add(f"{direction}-{label}", agent.name, mib / elapsed)
                rows.add(f"{direction}-{label}-cpu", agent.name, cpu / mib * 1e3)


def peak_memory(agent: Agent, workdir: Path, source: Path) -> float:
    """Peak resident memory above idle, in MiB, during one 48 MiB read of ``source``
    (more than 48 MiB)."""
    with agent_process(agent, workdir) as (pid, client):
        handle = client.call("guest-file-open", path=str(source))
        client.call("guest-file-read", handle=handle, count=10)
        idle = rss_kib(pid)
        client.call("guest-file-read", handle=handle, count=48 * MIB)
        return (rss_kib(pid, "VmHWM") - idle) / 1024


def measure(
    builds: list[Agent], rounds: int, *, size_mib: int, only: Collection[str] | None = None
) -> list[Metric]:
    """The rows named in ``only`` (every row by default) for each trio-qga build, qemu-ga
    and, for reads, the floor, in alternating rounds; each round starts each agent afresh."""
    rows = Rows((m.key, m) for m in files_metrics() if only is None or m.key in only)
    if not rows:
        return []
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        workdir = Path(tmp)
        source = random_file(workdir / "source", size_mib)
        if "peak-48m" in rows:
            big_source = random_file(workdir / "big-source", 49)
        for round_number in range(rounds):
            for agent in in_turn([*builds, QEMU_GA, FLOOR_SERVER], round_number):
                # The floor server only reads.
                directions = ["read"] if agent is FLOOR_SERVER else ["read", "write"]
                print(f"  round {round_number + 1}/{rounds}: {agent.name}", file=sys.stderr)
                transfer(agent, workdir, source, size_mib * MIB, rows, directions)
                if "peak-48m" in rows:
                    rows.add("peak-48m", agent.name, peak_memory(agent, workdir, big_source))
    return list(rows.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per agent (default 1)")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="measure these rows only")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    builds = [trio_qga()]
    metrics = measure(builds, args.rounds, size_mib=args.size, only=args.only)
    print(f"{args.size} MiB file")
    print(report.table(metrics, [agent.name for agent in builds]))
    print(report.footnote())
    if args.json:
        report.write_json(args.json, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
