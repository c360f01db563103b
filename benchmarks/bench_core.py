"""Core protocol benchmark: trio-qga and the real qemu-ga side by side, in one run.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--size MIB] [--only ROW ...]

The agents run as processes on unix sockets, driven by the same blocking
Python client: start-up to the first reply and memory once started, ping
latency, pipelined pings, connect + 0xFF sync + ping + close cycles, the
agent's CPU per MiB of 4 KiB reads, and memory after 1 MiB and 16 MiB reads
and writes and after a 48 MiB read. The floor, what the stack costs by
itself, is measured in the same rounds: for start-up (wall-clock time and
CPU time, the steadier figure on a busy machine) and memory, an interpreter
that imports trio and pydantic and nothing else; for the ping, connect and
4 KiB read rows, ``benchmarks/stack_floor.py``, a bare server answering the
same requests with trio's own streams and the stdlib. Rounds alternate
between the agents so that machine noise hits them all; each row gives the
medians and ratios taken round by round (``benchmarks/report.py``), never a
pass/fail. :func:`measure` takes any number of trio-qga builds:
``benchmarks/ab.py`` compares two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pybase64

if __package__ in (None, ""):  # run as a script: the project's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report
from benchmarks.report import FLOOR, Metric

PING = b'{"execute":"guest-ping"}\n'
PING_REPLY = b'{"return": {}}\n'
ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")
# The floor (what the stack this agent is built on costs by itself) is named FLOOR.
FLOOR_IMPORTS = "import trio, pydantic"
# Seconds an agent idles after its first reply before its memory is read: what it
# holds once serving. trio-qga loads the rest of its commands once quiet for
# agent.core.activity's QUIET_FOR (0.2 s); at 0.1 s the row missed them.
SETTLE = 0.5
# Seconds between a host leaving after its transfers and the memory reading: the
# agent has to see the end of the connection first (trio-qga then gives freed
# memory back). Read at once, the figure was a race: 38 to 69 MiB for trio-qga.
SETTLE = 0.5


# Seconds an agent has to answer its first sync after it was started.
START_TIMEOUT = 30.0


class AgentError(RuntimeError):
    """An agent that did not start, or stopped answering: what it said is in the message."""


@dataclass(frozen=True)
class Agent:
    name: str
    command: Callable[[Path, Path], list[str]]  # (socket, workdir) -> argv


def trio_qga(
    name: str = "trio-qga", python: str | Path = sys.executable, *, plugin_record: bool = True
) -> Agent:
    """trio-qga run by ``python`` (an interpreter it is installed for) as a guest starts
    it: its plugin record in ``workdir/cache`` (made by the first start), as every boot
    after the first finds it in /var/cache/trio-qga. Without ``plugin_record`` (a
    build older than the record, which refuses ``--cache-dir``) every start is a
    first start."""

    def command(sock: Path, workdir: Path) -> list[str]:
        argv = _trio_qga_argv(python, sock, workdir)
        return [*argv, "--cache-dir", str(workdir / "cache")] if plugin_record else argv

    return Agent(name, command)


def first_start(agent: Agent) -> Agent:
    """``agent`` (a :func:`trio_qga`) without a plugin record: the first start after
    an install or upgrade."""

    def command(sock: Path, workdir: Path) -> list[str]:
        argv = agent.command(sock, workdir)
        if "--cache-dir" not in argv:  # a build without a record: always a first start
            return argv
        return [*argv[: argv.index("--cache-dir") + 1], ""]

    return Agent(agent.name, command)


def _trio_qga_argv(python: str | Path, sock: Path, workdir: Path) -> list[str]:
    return [
        str(python),
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


def stack_floor(sock: Path, workdir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "stack_floor.py"), f"unix-listen:{sock}"]


QEMU_GA = Agent("qemu-ga", qemu_ga)
AGENTS = [trio_qga(), QEMU_GA]
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
    """The agent as a process; yields it, its socket and its start-up time to first reply.

    It runs in a directory of its own under ``workdir`` (its socket, state, pid file
    and what it says on stderr), so that agents can run side by side. It is stopped
    on the way out, whatever ends the block (Ctrl-C included)."""
    home = workdir / agent.name
    home.mkdir(exist_ok=True)
    sock = home / "agent.sock"
    sock.unlink(missing_ok=True)  # a server that binds would find the last one's
    argv = agent.command(sock, home)
    with (home / "stderr").open("wb") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=home)
    try:
        client = _first_client(proc, sock, argv, home / "stderr")
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


def _first_client(
    proc: subprocess.Popen[bytes], sock: Path, argv: list[str], stderr: Path
) -> Client:
    """A client of the agent just started, once it listens; AgentError if it exits or
    does not listen in time, with what it said."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AgentError(
                f"exited with status {proc.returncode} before answering: {shlex.join(argv)}\n"
                + _tail(stderr)
            )
        try:
            return Client(sock, deadline=0)  # one try
        except OSError as err:
            if time.monotonic() > deadline:
                raise AgentError(
                    f"not listening after {START_TIMEOUT:.0f} s ({err}): {shlex.join(argv)}\n"
                    + _tail(stderr)
                ) from err
            time.sleep(0.001)


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in text) if text else "  (nothing on stderr)"


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


def core_metrics() -> list[Metric]:
    """The rows of this benchmark, in the order of its table, nothing measured yet."""
    return [
        Metric("startup", "start-up to first reply (ms)"),
        Metric("startup-cpu", "CPU time to first reply (ms)"),
        Metric("first-start-cpu", "the same, first start after an install (ms)"),
        Metric("idle-memory", "resident memory, idle after start (MiB)"),
        Metric("first-start-memory", "the same, first start after an install (MiB)"),
        Metric("ping-p50", "guest-ping median latency (us)"),
        Metric("ping-p99", "guest-ping p99 latency (us)"),
        Metric("pipelined", "pipelined pings per second", higher_is_better=True),
        Metric("connect", "connect+sync+ping+close per second", higher_is_better=True),
        Metric("connect-cpu", "agent CPU per connect+sync+ping+close (us)"),
        Metric("small-reads-cpu", "agent CPU per MiB, reads of 4 KiB (ms)"),
        Metric("memory-after-load", "resident memory after 1 and 16 MiB transfers (MiB)"),
        Metric("memory-after-48m", "resident memory after a 48 MiB read (MiB)"),
    ]


# The rows each phase measures (a phase runs when one of its rows is asked for).
STARTUP_ROWS = {"startup", "startup-cpu", "first-start-cpu", "idle-memory", "first-start-memory"}
REQUEST_ROWS = {"ping-p50", "ping-p99", "pipelined", "connect", "connect-cpu", "small-reads-cpu"}
MEMORY_ROWS = {"memory-after-load", "memory-after-48m"}


class Rows(dict[str, Metric]):
    """The rows asked for, by key; figures of the others are dropped."""

    def add(self, key: str, who: str, value: float) -> None:
        if key in self:
            self[key].add(who, value)


def in_turn(agents: list[Agent], round_number: int) -> list[Agent]:
    """The order of one round: every other round reversed, so that no agent always
    runs first (after the machine idled) or last."""
    return agents if round_number % 2 == 0 else agents[::-1]


def random_file(path: Path, mib: int) -> Path:
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))
    return path


def measure(
    builds: list[Agent],
    rounds: int,
    *,
    quick: bool = False,
    source_mib: int = 16,
    only: Collection[str] | None = None,
) -> list[Metric]:
    """The rows named in ``only`` (every row by default) for each trio-qga build
    (:func:`trio_qga`), qemu-ga and the floor, in alternating rounds so that drift
    hits them all alike."""
    rows = Rows((m.key, m) for m in core_metrics() if only is None or m.key in only)
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        workdir = Path(tmp)
        if rows.keys() & STARTUP_ROWS:
            _startup_rounds(builds, rounds, workdir, rows)
        if rows.keys() & REQUEST_ROWS:
            source = random_file(workdir / "source", source_mib)
            _request_rounds(builds, rounds, workdir, source, rows, quick)
        if rows.keys() & MEMORY_ROWS:
            source = random_file(workdir / "source", source_mib)
            big_source = random_file(workdir / "big-source", 48)
            _memory_rounds(builds, rounds, workdir, source, big_source, rows)
    return list(rows.values())


def _startup_rounds(builds: list[Agent], rounds: int, workdir: Path, rows: Rows) -> None:
    for agent in builds:  # each build's plugin record, and its files in the page cache
        with started(agent, workdir):
            pass
    for round_number in range(rounds):
        wall, cpu = floor_startup()
        rss = floor_rss_kib() / 1024
        for key, value in (("startup", wall * 1e3), ("startup-cpu", cpu * 1e3)):
            rows.add(key, FLOOR, value)
        rows.add("first-start-cpu", FLOOR, cpu * 1e3)
        rows.add("idle-memory", FLOOR, rss)
        rows.add("first-start-memory", FLOOR, rss)
        for agent in in_turn([*builds, QEMU_GA], round_number):
            with started(agent, workdir) as (proc, _, seconds):
                rows.add("startup", agent.name, seconds * 1e3)
                cpu_ms = on_cpu_seconds(proc.pid) * 1e3
                rows.add("startup-cpu", agent.name, cpu_ms)
                time.sleep(SETTLE)
                rss = rss_kib(proc.pid) / 1024
                rows.add("idle-memory", agent.name, rss)
            if agent is QEMU_GA:  # no first start of its own: the same round's figures
                rows.add("first-start-cpu", agent.name, cpu_ms)
                rows.add("first-start-memory", agent.name, rss)
                continue
            if rows.keys() & {"first-start-cpu", "first-start-memory"}:
                with started(first_start(agent), workdir) as (proc, _, _):
                    rows.add("first-start-cpu", agent.name, on_cpu_seconds(proc.pid) * 1e3)
                    time.sleep(SETTLE)
                    rows.add("first-start-memory", agent.name, rss_kib(proc.pid) / 1024)


def _request_rounds(
    builds: list[Agent], rounds: int, workdir: Path, source: Path, rows: Rows, quick: bool
) -> None:
    n_seq, n_pipe, n_cycles = (200, 5000, 30) if quick else (1000, 5000, 100)
    with contextlib.ExitStack() as stack:
        running = {}
        for agent in [*builds, QEMU_GA, FLOOR_SERVER]:
            proc, sock, _ = stack.enter_context(started(agent, workdir))
            running[agent.name] = (agent, proc.pid, sock)
        agents = [agent for agent, _, _ in running.values()]
        for round_number in range(rounds):
            for agent in in_turn(agents, round_number):
                _, pid, sock = running[agent.name]
                name = agent.name
                if rows.keys() & {"ping-p50", "ping-p99"}:
                    latencies = sequential_pings(sock, n_seq)
                    rows.add("ping-p50", name, statistics.median(latencies) * 1e6)
                    rows.add("ping-p99", name, statistics.quantiles(latencies, n=100)[98] * 1e6)
                if "pipelined" in rows:
                    rows.add("pipelined", name, pipelined_pings(sock, n_pipe))
                if rows.keys() & {"connect", "connect-cpu"}:
                    cpu0 = on_cpu_seconds(pid)
                    rows.add("connect", name, connect_cycles(sock, n_cycles))
                    rows.add("connect-cpu", name, (on_cpu_seconds(pid) - cpu0) / n_cycles * 1e6)
                if "small-reads-cpu" in rows:
                    rows.add("small-reads-cpu", name, small_read_cpu(pid, sock, source))


def _memory_rounds(
    builds: list[Agent],
    rounds: int,
    workdir: Path,
    source: Path,
    big_source: Path,
    rows: Rows,
) -> None:
    """Each round starts each agent afresh: what it holds after its host's transfers."""
    for round_number in range(rounds):
        for agent in in_turn([*builds, QEMU_GA], round_number):
            with started(agent, workdir) as (proc, sock, _):
                big_transfers(sock, source, workdir / agent.name)
                time.sleep(SETTLE)
                rows.add("memory-after-load", agent.name, rss_kib(proc.pid) / 1024)
                big_read(sock, big_source)
                time.sleep(SETTLE)
                rows.add("memory-after-48m", agent.name, rss_kib(proc.pid) / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument(
        "--size", type=int, default=16, help="MiB read and written per transfer (default 16)"
    )
    parser.add_argument("--only", nargs="+", metavar="ROW", help="measure these rows only")
    parser.add_argument("--json", type=Path, help="also write the per-round figures to this file")
    args = parser.parse_args()
    builds = [trio_qga()]
    metrics = measure(
        builds, 3 if args.quick else 10, quick=args.quick, source_mib=args.size, only=args.only
    )
    print(report.table(metrics, [agent.name for agent in builds]))
    print(report.footnote())
    if args.json:
        report.write_json(args.json, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
