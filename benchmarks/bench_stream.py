"""Streaming exec benchmark: ``trio-qga-client run`` against guest-exec capture.

    .venv/bin/python -m benchmarks.bench_stream [--rounds N] [--lines N] [--json FILE]

trio-qga and the real qemu-ga run as processes on unix sockets (same machine,
so guest and host share one monotonic clock):

- line latency: a guest program prints a line stamped with the monotonic clock
  every 20 ms; ``trio-qga-client run`` (the CLI, as a process) prints it; the
  benchmark reads the CLI's stdout and takes now minus the stamp. Median, p99,
  and the first line of each round (a read that has to start up first);
- throughput: 256 MiB and 16 MiB of stdout streamed through ``QgaClient.run``
  until the exit, against guest-exec capturing 16 MiB (its limit) until the
  base64 of all of it is back (``benchmarks/bench_exec.py``'s measure), on
  both agents.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from agent.host.client import QgaClient
from benchmarks.bench_core import AGENTS, ROOT, started
from benchmarks.bench_exec import MIB, ExecClient, median_ms, output_seconds, p99_ms

STAMPED_LINES = """
import sys, time
for _ in range({count}):
    sys.stdout.write(f"{{time.monotonic()!r}}\\n")
    sys.stdout.flush()
    time.sleep(0.02)
"""


def line_latencies(sock: Path, count: int) -> list[float]:
    """Latency of each stamped line, from the guest's print to the client's."""
    program = STAMPED_LINES.format(count=count)
    command = [sys.executable, "-m", "agent.host.cli", "--address", str(sock), "run", "--"]
    with subprocess.Popen(
        [*command, sys.executable, "-c", program],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    ) as client:
        assert client.stdout is not None
        latencies = [time.monotonic() - float(line) for line in client.stdout]
        assert client.wait() == 0
    assert len(latencies) == count, len(latencies)
    return latencies


async def streamed_seconds(sock: Path, size: int) -> float:
    async with await QgaClient.connect_unix(str(sock)) as client:
        t0 = time.perf_counter()
        execution = await client.run(["/bin/head", "-c", str(size), "/dev/zero"])
        received = 0
        async for chunk in execution:
            received += len(chunk.data)
        assert (await execution).exitcode == 0
        elapsed = time.perf_counter() - t0
    assert received == size, received
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--lines", type=int, default=100, help="lines per round (default 100)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    latencies: list[float] = []
    first: list[float] = []
    samples: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        socks: dict[str, Path] = {}
        for agent in AGENTS:
            workdir = Path(tmp) / agent.name
            workdir.mkdir()
            _, socks[agent.name], _ = stack.enter_context(started(agent, workdir))
        ours = socks["trio-qga"]
        for round_number in range(args.rounds):
            print(f"  round {round_number + 1}/{args.rounds}", file=sys.stderr)
            round_latencies = line_latencies(ours, args.lines)
            first.append(round_latencies[0])
            latencies += round_latencies
            for size in (16, 256):
                seconds = trio.run(streamed_seconds, ours, size * MIB)
                samples.setdefault(f"streamed {size}", []).append(seconds)
            for name, sock in socks.items():
                client = ExecClient(sock)
                try:
                    samples.setdefault(f"capture {name}", []).append(
                        output_seconds(client, 16 * MIB)
                    )
                finally:
                    client.close()
    results = {
        "line printed in the guest to printed by run, median (ms)": median_ms(latencies),
        "line printed in the guest to printed by run, p99 (ms)": p99_ms(latencies),
        "first line of a run, median (ms)": median_ms(first),
        "16 MiB stdout streamed by run, trio-qga (MiB/s)": 16
        / statistics.median(samples["streamed 16"]),
        "256 MiB stdout streamed by run, trio-qga (MiB/s)": 256
        / statistics.median(samples["streamed 256"]),
        "16 MiB stdout captured by guest-exec, trio-qga (MiB/s)": 16
        / statistics.median(samples["capture trio-qga"]),
        "16 MiB stdout captured by guest-exec, qemu-ga (MiB/s)": 16
        / statistics.median(samples["capture qemu-ga"]),
    }
    for metric, value in results.items():
        print(f"{metric:58} {value:9.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
