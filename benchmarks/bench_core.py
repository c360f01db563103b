"""Core protocol benchmark: trio-qga and the real qemu-ga side by side, in one run.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--size MIB] [--json FILE]

Both agents run as processes on unix sockets, driven by the same blocking
Python client: start-up to the first reply and memory once started, ping
latency, pipelined pings, connect + 0xFF sync + ping + close cycles, the
agent's CPU per MiB of 4 KiB reads, and memory after 1 MiB and 16 MiB reads
and writes and after a 48 MiB read. The floor, what the stack costs by
itself, is measured in the same rounds: for start-up (wall-clock time and
CPU time, the steadier figure on a busy machine) and memory, an interpreter
that imports trio and pydantic and nothing else; for the ping, connect and
4 KiB read rows, ``benchmarks/stack_floor.py``, a bare server answering the
same requests with trio's own streams and the stdlib. Rounds alternate
between the agents so that machine noise hits both; each row gives the
medians and the ratio of each round (ours / theirs), its median and range,
never a pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pybase64

PING = b'{"execute":"guest-ping"}\n'
PING_REPLY = b'{"return": {}}\n'
ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")
# The floor: what the stack this agent is built on costs by itself.
FLOOR = "floor"
FLOOR_IMPORTS = "import trio, pydantic"
# Seconds between a host leaving after its transfers and the memory reading: the
# agent has to see the end of the connection first (trio-qga then gives freed
# memory back). Read at once, the figure was a race: 38 to 69 MiB for trio-qga.
SETTLE = 0.5


@dataclass
class Agent:
    name: str
    command: Callable[[Path, Path], list[str]]  # (socket, workdir) -> argv


def ours(sock: Path, workdir: Path, cache_dir: str | None = None) -> list[str]:
    """trio-qga as a guest starts it: its plugin record in ``workdir/cache`` (made by
    the first start), as every boot after the first finds it in /var/cache/trio-qga."""
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
        "--cache-dir",
        str(workdir / "cache") if cache_dir is None else cache_dir,
    ]


def ours_first_start(sock: Path, workdir: Path) -> list[str]:
    """trio-qga without a plugin record: the first start after an install or upgrade."""
    return ours(sock, workdir, cache_dir="")


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


def stack_floor(sock: Path, workdir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "stack_floor.py"), f"unix-listen:{sock}"]


AGENTS = [Agent("trio-qga", ours), Agent("qemu-ga", qemu_ga)]
FIRST_START = Agent("trio-qga", ours_first_start)
# The per-request rows' floor: a bare server on the stack, answering the same requests.
FLOOR_SERVER = Agent(FLOOR, stack_floor)


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


def status_kib(status: str, field: str = "VmRSS") -> int:
    """A figure in KiB from the text of a /proc/PID/status file."""
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    return status_kib(Path(f"/proc/{pid}/status").read_text(), field)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def on_cpu_seconds(pid: int) -> float:
    """CPU time of the running threads of ``pid`` so far, to the nanosecond
    (schedstat; ``cpu_seconds`` also counts threads that ended, by clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            pass
    return total / 1e9


def floor_startup() -> tuple[float, float]:
    """Seconds, wall and CPU, for the interpreter to import the stack the agent is
    built on, and exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR_IMPORTS], check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


def floor_rss_kib() -> int:
    """Resident memory of an interpreter that imported the same stack, and nothing else."""
    script = f"{FLOOR_IMPORTS}; print(open('/proc/self/status').read())"
    status = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    return status_kib(status.stdout.decode())


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
    """Cycles per second of connect, 0xFF + guest-sync-delimited, guest-ping, disconnect."""
    t0 = time.perf_counter()
    for i in range(count):
        client = Client(sock, time.monotonic() + 5)
        sync(client, 100 + i)
        client.sock.sendall(PING)
        if client.line() != PING_REPLY:
            raise RuntimeError("bad reply to guest-ping")
        client.close()
    return count / (time.perf_counter() - t0)


def read_file(client: Client, path: Path, count: int) -> int:
    """Read ``path`` whole with guest-file-read ``count`` at a time; bytes read."""
    handle = client.call("guest-file-open", path=str(path), mode="r")
    total = 0
    while True:
        reply = client.call("guest-file-read", handle=handle, count=count)
        total += len(pybase64.b64decode(reply["buf-b64"]))
        if reply["eof"] or reply["count"] == 0:
            break
    client.call("guest-file-close", handle=handle)
    return total


def write_file(client: Client, path: Path, size: int, count: int) -> int:
    """Write ``size`` bytes to ``path`` with guest-file-write ``count`` at a time."""
    chunk = pybase64.b64encode(os.urandom(count)).decode()
    handle = client.call("guest-file-open", path=str(path), mode="w")
    total = 0
    while total < size:
        total += client.call("guest-file-write", handle=handle, **{"buf-b64": chunk})["count"]
    client.call("guest-file-close", handle=handle)
    return total


def small_read_cpu(pid: int, sock: Path, source: Path) -> float:
    """The agent's CPU milliseconds per MiB read with guest-file-read count 4096."""
    client = Client(sock, time.monotonic() + 5)
    sync(client, 4)
    cpu0 = on_cpu_seconds(pid)
    moved = read_file(client, source, 4096)
    cpu = on_cpu_seconds(pid) - cpu0
    client.close()
    return cpu / (moved / MIB) * 1e3


def big_transfers(sock: Path, source: Path, workdir: Path) -> None:
    """The load before "memory after load": 1 MiB and 16 MiB reads and writes."""
    client = Client(sock, time.monotonic() + 5)
    sync(client, 5)
    size = source.stat().st_size
    for count in (MIB, 16 * MIB):
        read_file(client, source, count)
        write_file(client, workdir / "written", size, count)
    client.close()


def big_read(sock: Path, source: Path) -> None:
    """One guest-file-read of the largest count qemu-ga allows (48 MiB)."""
    client = Client(sock, time.monotonic() + 5)
    sync(client, 6)
    handle = client.call("guest-file-open", path=str(source), mode="r")
    client.call("guest-file-read", handle=handle, count=48 * MIB)
    client.call("guest-file-close", handle=handle)
    client.close()


@dataclass
class Metric:
    """One row: per-round figures of each agent and, where it has one, of the floor."""

    title: str
    higher_is_better: bool = False
    rounds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, who: str, value: float) -> None:
        self.rounds.setdefault(who, []).append(value)

    def median(self, who: str) -> float:
        return statistics.median(self.rounds[who])

    def ratios(self, who: str, other: str) -> list[float]:
        """Round by round (the same moment of machine load), ``who`` / ``other``."""
        pairs = zip(self.rounds[who], self.rounds[other], strict=False)
        return [mine / theirs for mine, theirs in pairs if theirs]


def measure(quick: bool, source_mib: int) -> list[Metric]:
    """Every metric for both agents, in alternating rounds so drift hits both alike."""
    rounds = 3 if quick else 10
    n_seq, n_pipe, n_cycles = (200, 5000, 30) if quick else (1000, 5000, 100)
    startup = Metric("start-up to first reply (ms)")
    startup_cpu = Metric("CPU time to first reply (ms)")
    idle = Metric("resident memory, idle after start (MiB)")
    first_cpu = Metric("the same, first start after an install (ms)")
    first_idle = Metric("the same, first start after an install (MiB)")
    ping_median = Metric("guest-ping median latency (us)")
    ping_p99 = Metric("guest-ping p99 latency (us)")
    pipelined = Metric("pipelined pings per second", higher_is_better=True)
    cycles = Metric("connect+sync+ping+close per second", higher_is_better=True)
    cycle_cpu = Metric("agent CPU per connect+sync+ping+close (us)")
    small_reads = Metric("agent CPU per MiB, reads of 4 KiB (ms)")
    after_load = Metric("resident memory after 1 and 16 MiB transfers (MiB)")
    after_big = Metric("resident memory after a 48 MiB read (MiB)")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-core-")))
        source = workdir / "source"
        source.write_bytes(os.urandom(source_mib * MIB))
        big_source = workdir / "big-source"
        big_source.write_bytes(os.urandom(48 * MIB))
        for _ in range(rounds):
            wall, cpu = floor_startup()
            startup.add(FLOOR, wall * 1e3)
            startup_cpu.add(FLOOR, cpu * 1e3)
            for agent in AGENTS:
                with started(agent, workdir) as (proc, _, seconds):
                    startup.add(agent.name, seconds * 1e3)
                    startup_cpu.add(agent.name, on_cpu_seconds(proc.pid) * 1e3)
                    time.sleep(0.1)  # let it settle: what it holds once serving
                    idle.add(agent.name, rss_kib(proc.pid) / 1024)
            with started(FIRST_START, workdir) as (proc, _, _):
                first_cpu.add("trio-qga", on_cpu_seconds(proc.pid) * 1e3)
                time.sleep(0.1)
                first_idle.add("trio-qga", rss_kib(proc.pid) / 1024)
            idle.add(FLOOR, floor_rss_kib() / 1024)
            for first, same in ((first_cpu, startup_cpu), (first_idle, idle)):
                for who in ("qemu-ga", FLOOR):  # the same round's, to compare with
                    first.add(who, same.rounds[who][-1])
        running = {}
        for agent in [*AGENTS, FLOOR_SERVER]:
            proc, sock, _ = stack.enter_context(started(agent, workdir))
            running[agent.name] = (proc.pid, sock)
        for _ in range(rounds):
            for name, (pid, sock) in running.items():
                latencies = sequential_pings(sock, n_seq)
                ping_median.add(name, statistics.median(latencies) * 1e6)
                ping_p99.add(name, statistics.quantiles(latencies, n=100)[98] * 1e6)
                pipelined.add(name, pipelined_pings(sock, n_pipe))
                cpu0 = on_cpu_seconds(pid)
                cycles.add(name, connect_cycles(sock, n_cycles))
                cycle_cpu.add(name, (on_cpu_seconds(pid) - cpu0) / n_cycles * 1e6)
                small_reads.add(name, small_read_cpu(pid, sock, source))
        for name, (pid, sock) in running.items():
            if name == FLOOR:
                continue  # it does not write files
            big_transfers(sock, source, workdir)
            time.sleep(SETTLE)
            after_load.add(name, rss_kib(pid) / 1024)
            big_read(sock, big_source)
            time.sleep(SETTLE)
            after_big.add(name, rss_kib(pid) / 1024)
    return [
        startup,
        startup_cpu,
        first_cpu,
        idle,
        first_idle,
        ping_median,
        ping_p99,
        pipelined,
        cycles,
        cycle_cpu,
        small_reads,
        after_load,
        after_big,
    ]


def spread(values: list[float]) -> str:
    """Median and the range over the rounds."""
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument(
        "--size", type=int, default=16, help="MiB read and written per transfer (default 16)"
    )
    parser.add_argument("--json", type=Path, help="also write the per-round figures to this file")
    args = parser.parse_args()
    metrics = measure(args.quick, args.size)
    print(
        f"{'metric':52} {'trio-qga':>9} {'qemu-ga':>9} {'ours/qemu-ga (range)':>22}"
        f" {'floor':>7} {'ours/floor (range)':>20}"
    )
    for metric in metrics:
        ours_, theirs = metric.median("trio-qga"), metric.median("qemu-ga")
        line = (
            f"{metric.title:52} {ours_:9.1f} {theirs:9.1f}"
            f" {spread(metric.ratios('trio-qga', 'qemu-ga')):>22}"
        )
        if FLOOR in metric.rounds:
            floor_ratio = spread(metric.ratios("trio-qga", FLOOR))
            line += f" {metric.median(FLOOR):7.1f} {floor_ratio:>20}"
        print(line + ("  (higher is better)" if metric.higher_is_better else ""))
    print(
        f"(medians; ratios per round, median and range; floor: python -c '{FLOOR_IMPORTS}'"
        " for start-up and memory, benchmarks/stack_floor.py for the rest;"
        f" python {sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    )
    if args.json:
        args.json.write_text(json.dumps({metric.title: metric.rounds for metric in metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
