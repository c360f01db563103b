"""guest-exec benchmark: trio-qga and the real qemu-ga side by side, in one run.

    .venv/bin/python -m benchmarks.bench_exec [--rounds N] [--json FILE]

Both agents run as processes on unix sockets, driven by the same blocking
Python client, in alternating rounds so that machine noise hits both:

- start latency: guest-exec of /bin/true until its reply (the pid), and until
  guest-exec-status first reports it exited (status polled back to back);
- output throughput: a child writing 16 MiB (the capture limit) on stdout,
  from guest-exec until the base64 of all of it is back at the host;
- drain rate: a child writing 256 MiB with capture on, until it is reported
  exited (the agent keeps 16 MiB and must read and drop the rest);
- input throughput: 8 MiB of input-data through cat and back.

Figures are reported as ratios (ours / qemu-ga), never asserted. qemu-ga 7.2
takes capture-output only as a bool, so both get ``true``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pybase64

from benchmarks.bench_core import AGENTS, Client, started, sync

MIB = 1024 * 1024


class ExecClient(Client):
    def __init__(self, sock: Path) -> None:
        super().__init__(sock, time.monotonic() + 10)
        sync(self, 9)

    def exec(self, path: str, *args: str, **extra: object) -> int:
        pid: int = self.call("guest-exec", path=path, arg=list(args), **extra)["pid"]
        return pid

    def wait(self, pid: int) -> dict[str, Any]:
        while True:
            status: dict[str, Any] = self.call("guest-exec-status", pid=pid)
            if status["exited"]:
                return status
            time.sleep(0.0005)  # as a host polls: often, without spinning the agent's CPU away


def start_latency(client: ExecClient) -> tuple[float, float]:
    t0 = time.perf_counter()
    pid = client.exec("/bin/true")
    replied = time.perf_counter() - t0
    client.wait(pid)
    return replied, time.perf_counter() - t0


def output_seconds(client: ExecClient, size: int) -> float:
    t0 = time.perf_counter()
    pid = client.exec("/bin/head", "-c", str(size), "/dev/zero", **{"capture-output": True})
    status = client.wait(pid)
    data = pybase64.b64decode(status.get("out-data", ""))
    elapsed = time.perf_counter() - t0
    assert len(data) == min(size, 16 * MIB), len(data)
    return elapsed


def input_seconds(client: ExecClient, data: str, size: int) -> float:
    t0 = time.perf_counter()
    pid = client.exec("/bin/cat", **{"input-data": data, "capture-output": True})
    status = client.wait(pid)
    assert len(pybase64.b64decode(status["out-data"])) == size
    return time.perf_counter() - t0


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def p99_ms(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)] * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per agent (default 10)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    input_size = 8 * MIB
    input_data = pybase64.b64encode(os.urandom(input_size)).decode()
    samples: dict[str, dict[str, list[float]]] = {a.name: {} for a in AGENTS}
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp, contextlib.ExitStack() as stack:
        clients: dict[str, ExecClient] = {}
        for agent in AGENTS:
            workdir = Path(tmp) / agent.name
            workdir.mkdir()
            _, sock, _ = stack.enter_context(started(agent, workdir))
            clients[agent.name] = ExecClient(sock)
            stack.callback(clients[agent.name].close)
        for round_number in range(args.rounds):
            print(f"  round {round_number + 1}/{args.rounds}", file=sys.stderr)
            for agent in AGENTS:
                record = samples[agent.name]
                client = clients[agent.name]
                for _ in range(20):
                    replied, exited = start_latency(client)
                    record.setdefault("reply", []).append(replied)
                    record.setdefault("exited", []).append(exited)
                record.setdefault("out16", []).append(output_seconds(client, 16 * MIB))
                record.setdefault("drain", []).append(output_seconds(client, 256 * MIB))
                record.setdefault("input", []).append(input_seconds(client, input_data, input_size))
    results: dict[str, dict[str, float]] = {}
    for name, record in samples.items():
        results[name] = {
            "guest-exec /bin/true to reply, median (ms)": median_ms(record["reply"]),
            "guest-exec /bin/true to reply, p99 (ms)": p99_ms(record["reply"]),
            "guest-exec /bin/true to exited, median (ms)": median_ms(record["exited"]),
            "16 MiB stdout captured, to host (MiB/s)": 16 / statistics.median(record["out16"]),
            "256 MiB stdout drained, to exited (MiB/s)": 256 / statistics.median(record["drain"]),
            "8 MiB input-data through cat (MiB/s)": 8 / statistics.median(record["input"]),
        }
    ours, theirs = results["trio-qga"], results["qemu-ga"]
    print(f"{'metric':46} {'trio-qga':>9} {'qemu-ga':>9} {'ours/theirs':>12}")
    for metric, value in ours.items():
        other = theirs[metric]
        print(f"{metric:46} {value:9.2f} {other:9.2f} {value / other:11.2f}x")
    print("(ms: lower is better; MiB/s: higher is better)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
