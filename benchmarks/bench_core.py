"""Core protocol benchmark: trio-qga and the real qemu-ga side by side, in one run.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--json FILE]

Both agents run as processes on unix sockets, driven by the same blocking
Python client. Reported as ratios (ours / qemu-ga for times, qemu-ga / ours
inverted where higher is better), never as pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PING = b'{"execute":"guest-ping"}\n'
PING_REPLY = b'{"return": {}}\n'
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Agent:
    name: str
    command: Callable[[Path, Path], list[str]]  # (socket, workdir) -> argv


def ours(sock: Path, workdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent",
        "--transport",
        f"unix-listen:{sock}",
        "-t",
        str(workdir),
        "-f",
        str(workdir / "pid"),
    ]


def qemu_ga(sock: Path, workdir: Path) -> list[str]:
    binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
    return [
        binary,
        "-m",
        "unix-listen",
        "-p",
        str(sock),
        "-t",
        str(workdir),
        "-f",
        str(workdir / "pid"),
    ]


AGENTS = [Agent("trio-qga", ours), Agent("qemu-ga", qemu_ga)]


class Client:
    def __init__(self, path: Path, deadline: float) -> None:
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
        self.buf = b""

    def recv_until(self, marker: bytes) -> bytes:
        """Up to and including ``marker``; big replies are gathered without quadratic copying."""
        if marker not in self.buf:
            pieces = [self.buf]
            while True:
                data = self.sock.recv(1 << 20 if len(pieces) > 1 else 65536)
                if not data:
                    raise ConnectionError("agent closed the connection")
                pieces.append(data)
                if marker in data:
                    break
            self.buf = b"".join(pieces)
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    def line(self) -> bytes:
        return self.recv_until(b"\n")

    def call(self, name: str, **arguments: object) -> Any:
        """Run a command; its return value (RuntimeError for an error reply)."""
        request = {"execute": name, "arguments": arguments}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(self.line())
        if "error" in reply:
            raise RuntimeError(f"{name}: {reply['error']}")
        return reply["return"]

    def close(self) -> None:
        self.sock.close()


def sync(client: Client, sync_id: int) -> None:
    request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
    client.sock.sendall(b"\xff" + json.dumps(request).encode() + b"\n")
    expected = b"\xff" + json.dumps({"return": sync_id}).encode() + b"\n"
    while client.line() != expected:
        pass


@contextlib.contextmanager
def started(agent: Agent, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, float]]:
    """The agent as a process; yields it, its socket and its start-up time to first reply."""
    sock = workdir / f"{agent.name}.sock"
    t0 = time.perf_counter()
    proc = subprocess.Popen(agent.command(sock, workdir), stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        client = Client(sock, time.monotonic() + 30)
        sync(client, 1)
        startup = time.perf_counter() - t0
        client.close()
        yield proc, sock, startup
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # qemu-ga 7.2 sometimes ignores SIGTERM here
            proc.kill()
            proc.wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sequential_pings(sock: Path, count: int) -> list[float]:
    client = Client(sock, time.monotonic() + 5)
    sync(client, 2)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        client.sock.sendall(PING)
        client.line()
        times.append(time.perf_counter() - t0)
    client.close()
    return times


def pipelined_pings(sock: Path, count: int) -> float:
    """Pings per second with ``count`` requests in flight at once."""
    client = Client(sock, time.monotonic() + 5)
    sync(client, 3)
    payload = PING * count
    t0 = time.perf_counter()
    sender = threading.Thread(target=client.sock.sendall, args=(payload,))
    sender.start()
    received = len(client.buf)
    while received < len(PING_REPLY) * count:
        data = client.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("agent closed the connection")
        received += len(data)
    elapsed = time.perf_counter() - t0
    sender.join()
    client.close()
    return count / elapsed


def connect_cycles(sock: Path, count: int) -> float:
    """Mean seconds for connect, guest-sync-delimited, disconnect."""
    t0 = time.perf_counter()
    for i in range(count):
        client = Client(sock, time.monotonic() + 5)
        sync(client, 100 + i)
        client.close()
    return (time.perf_counter() - t0) / count


def measure(quick: bool) -> dict[str, dict[str, float]]:
    """Every metric for both agents, in alternating rounds so drift hits both alike."""
    rounds = 3 if quick else 10
    n_seq, n_pipe, n_cycles = (200, 5000, 30) if quick else (1000, 5000, 100)
    names = [agent.name for agent in AGENTS]
    starts: dict[str, list[float]] = {name: [] for name in names}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    pipelined: dict[str, list[float]] = {name: [] for name in names}
    cycles: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, dict[str, float]] = {name: {} for name in names}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-core-")))
        for _ in range(rounds):
            for agent in AGENTS:
                with started(agent, workdir) as (_, _, startup):
                    starts[agent.name].append(startup)
        running = {}
        for agent in AGENTS:
            proc, sock, _ = stack.enter_context(started(agent, workdir))
            running[agent.name] = (proc, sock)
            results[agent.name]["idle RSS (MiB)"] = rss_kib(proc.pid) / 1024
        for _ in range(rounds):
            for name, (_, sock) in running.items():
                latencies[name] += sequential_pings(sock, n_seq)
                pipelined[name].append(pipelined_pings(sock, n_pipe))
                cycles[name].append(connect_cycles(sock, n_cycles))
        for name, (proc, _) in running.items():
            figures = results[name]
            figures["ping median (us)"] = statistics.median(latencies[name]) * 1e6
            figures["ping p99 (us)"] = statistics.quantiles(latencies[name], n=100)[98] * 1e6
            figures["pipelined pings/s"] = statistics.median(pipelined[name])
            figures["connect+sync+close (us)"] = statistics.median(cycles[name]) * 1e6
            figures["RSS after load (MiB)"] = rss_kib(proc.pid) / 1024
            figures["start-up to first reply (ms)"] = statistics.median(starts[name]) * 1e3
    return results


HIGHER_IS_BETTER = {"pipelined pings/s"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = measure(args.quick)
    ours_, theirs = figures["trio-qga"], figures["qemu-ga"]
    print(f"{'metric':32} {'trio-qga':>12} {'qemu-ga':>12} {'ratio':>8}")
    for metric, value in ours_.items():
        other = theirs[metric]
        ratio = value / other if other else float("nan")
        note = "x (higher is better)" if metric in HIGHER_IS_BETTER else "x"
        print(f"{metric:32} {value:12.1f} {other:12.1f} {ratio:7.2f}{note}")
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
