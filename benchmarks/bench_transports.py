"""Several transports: pings on one while another streams file reads back to back.

    .venv/bin/python -m benchmarks.bench_transports [--rounds N] [--pings N]
        [--read-mib N] [--slices N] [--base REV] [--json FILE]

trio-qga runs as a process on two unix sockets (``--transport`` twice),
installed as ``benchmarks/ab.py`` installs it (``benchmarks/builds.py``): the
working tree (B) and, with ``--base``, a git revision (A) in alternating
rounds, B/A in the table (a revision that serves several transports: main
before issue 25 serves one). Each
round, on a fresh agent, interleaves ``--slices`` times (so that the load of a
shared machine weighs on each alike):

- pings alone: guest-ping round trips on the first socket, one every ``PACE``
  seconds (``--pings`` per round in all);
- streaming alone: guest-file-read of ``--read-mib`` MiB back to back on the
  second socket (from a 64 MiB file, read again from the start at its end),
  for as long as those pings took; MiB/s of file data;
- together: as many pings while the same stream runs.

The streaming host is a process of its own (``--stream-worker``), so that its
reading does not share this process's GIL with the pings' clock; it takes the
replies' bytes and checks their count, without decoding the base64 (a host's
decoding is its own cost). Figures are printed, never asserted, as a median
and range over the rounds: ping p50 and p99 alone and together, and the
stream's throughput alone and together (``stream_together_share``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks import builds
from benchmarks.bench_core import MIB, PING, PING_REPLY, ROOT
from benchmarks.bench_exec import median_ms, p99_ms

PACE = 0.005  # seconds between pings
FILE_SIZE = 64 * MIB


def connect(path: Path, deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def agent(workdir: Path, python: Path) -> Iterator[tuple[Path, Path]]:
    """trio-qga on two sockets, installed for ``python``; yields them once both answer."""
    first, second = workdir / "first.sock", workdir / "second.sock"
    command = [str(python), "-m", "agent", "--no-plugins", "--cache-dir", ""]
    command += ["-t", str(workdir), "-f", ""]
    command += ["--transport", f"unix-listen:{first}", "--transport", f"unix-listen:{second}"]
    # Run from the work directory: from the checkout, its agent/ would be imported.
    proc = subprocess.Popen(command, cwd=workdir, stderr=subprocess.DEVNULL)
    try:
        for path in (first, second):
            with contextlib.closing(connect(path, time.monotonic() + 60)) as sock:
                sock.sendall(PING)
                assert sock.recv(100) == PING_REPLY
        yield first, second
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def pings(path: Path, count: int) -> list[float]:
    """Round trips of ``count`` pings, one every PACE seconds."""
    times = []
    with contextlib.closing(connect(path, time.monotonic() + 10)) as sock:
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(PING)
            reply = b""
            while not reply.endswith(b"\n"):
                reply += sock.recv(100)
            times.append(time.perf_counter() - start)
            assert reply == PING_REPLY, reply
            time.sleep(PACE)
    return times


class StreamHost:
    """A host streaming reads on a socket, in a process of its own (``--stream-worker``),
    when told: :meth:`stream` starts it, :meth:`pause` stops it and gives the bytes
    of file data moved and the seconds it took."""

    def __init__(self, path: Path, data: Path, read_size: int) -> None:
        command = [sys.executable, "-m", "benchmarks.bench_transports", "--stream-worker"]
        command += [str(path), str(data), str(read_size)]
        self.worker = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.worker.stdin is not None
        assert self.worker.stdout is not None
        self.commands, self.answers = self.worker.stdin, self.worker.stdout
        assert self.answers.readline() == "ready\n"

    def stream(self) -> None:
        self.commands.write("stream\n")
        self.commands.flush()
        assert self.answers.readline() == "streaming\n"

    def pause(self) -> tuple[int, float]:
        self.commands.write("pause\n")
        self.commands.flush()
        moved, seconds = json.loads(self.answers.readline())
        return moved, seconds

    def close(self) -> None:
        self.commands.close()
        self.worker.wait(60)


def stream_worker(path: str, data: str, read_size: int) -> int:
    """Reads back to back between a ``stream`` and a ``pause`` line on stdin; on each
    pause prints [bytes, seconds] as JSON. Ends at the end of stdin."""
    sock = connect(Path(path), time.monotonic() + 10)
    reply = Reply(sock)
    sock.sendall(json.dumps({"execute": "guest-file-open", "arguments": {"path": data}}).encode())
    handle = json.loads(reply.line())["return"]
    read = json.dumps(
        {"execute": "guest-file-read", "arguments": {"handle": handle, "count": read_size}}
    ).encode()
    seek = json.dumps(
        {"execute": "guest-file-seek", "arguments": {"handle": handle, "offset": 0, "whence": 0}}
    ).encode()
    print("ready", flush=True)
    for command in sys.stdin:
        assert command == "stream\n", command
        print("streaming", flush=True)
        moved = 0
        start = time.perf_counter()
        while not select.select([sys.stdin], [], [], 0)[0]:
            sock.sendall(read)
            line = reply.line()
            count = int(line[len(b'{"return": {"count": ') :].split(b",", 1)[0])
            moved += count
            if count < read_size:  # the end of the file: from the start again
                sock.sendall(seek)
                reply.line()
        seconds = time.perf_counter() - start
        assert sys.stdin.readline() == "pause\n"
        print(json.dumps([moved, seconds]), flush=True)
    return 0


class Reply:
    """Reply lines from a socket, read in big pieces, joined once each."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rest = b""

    def line(self) -> bytes:
        pieces = [self.rest]
        while b"\n" not in pieces[-1]:
            data = self.sock.recv(4 * MIB)
            assert data, "the agent closed the socket"
            pieces.append(data)
        joined = b"".join(pieces)
        line, self.rest = joined.split(b"\n", 1)
        return line


def round_figures(
    workdir: Path, python: Path, count: int, read_size: int, slices: int
) -> dict[str, float]:
    """One agent; ``slices`` times: pings alone, the stream alone, both together
    (interleaved, so that the load of a shared machine weighs on each alike)."""
    data = workdir / "data"
    with open(data, "wb") as file:
        file.write(os.urandom(FILE_SIZE))
    alone: list[float] = []
    together: list[float] = []
    stream_alone = [0, 0.0]
    stream_together = [0, 0.0]
    with agent(workdir, python) as (first, second):
        host = StreamHost(second, data, read_size)
        try:
            for _ in range(slices):
                batch = pings(first, count // slices)
                alone += batch
                host.stream()
                time.sleep(sum(batch) + len(batch) * PACE)
                moved, seconds = host.pause()
                stream_alone[0] += moved
                stream_alone[1] += seconds
                host.stream()
                together += pings(first, count // slices)
                moved, seconds = host.pause()
                stream_together[0] += moved
                stream_together[1] += seconds
        finally:
            host.close()
    return {
        "ping_alone_p50_ms": median_ms(alone),
        "ping_alone_p99_ms": p99_ms(alone),
        "ping_together_p50_ms": median_ms(together),
        "ping_together_p99_ms": p99_ms(together),
        "ping_together_max_ms": max(together) * 1e3,
        "stream_alone_mib_s": stream_alone[0] / MIB / stream_alone[1],
        "stream_together_mib_s": stream_together[0] / MIB / stream_together[1],
    }


def main() -> int:
    if sys.argv[1:2] == ["--stream-worker"]:
        return stream_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--pings", type=int, default=1000, help="pings per round (default 1000)")
    parser.add_argument("--read-mib", type=int, default=1, help="MiB per read (default 1)")
    parser.add_argument(
        "--slices", type=int, default=10, help="interleaved slices per round (default 10)"
    )
    parser.add_argument(
        "--base", help="also a git revision (A), in alternating rounds with the working tree (B)"
    )
    parser.add_argument(
        "--cache", type=Path, default=builds.DEFAULT_CACHE, help="where builds are kept"
    )
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    args = parser.parse_args()
    chosen = {"B": builds.working_tree(args.cache)}
    if args.base:
        chosen = {"A": builds.revision(args.base, args.cache), **chosen}
    for name, build in chosen.items():
        print(f"{name}: {build.label}")
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    for number in range(args.rounds):
        for name, build in chosen.items():
            with tempfile.TemporaryDirectory(prefix="bench-transports-") as workdir:
                figures = round_figures(
                    Path(workdir), build.python, args.pings, args.read_mib * MIB, args.slices
                )
            figures["stream_together_share"] = (
                figures["stream_together_mib_s"] / figures["stream_alone_mib_s"]
            )
            rounds[name].append(figures)
            shown = {key: round(value, 2) for key, value in figures.items()}
            print(f"round {number + 1} {name}: {json.dumps(shown)}")
    print(
        f"reads of {args.read_mib} MiB; median [range] of {args.rounds} rounds"
        f" (load average at the end {os.getloadavg()[0]:.1f}):"
    )
    for key in rounds["B"][0]:
        cells = []
        for name in chosen:
            values = [figures[key] for figures in rounds[name]]
            cells.append(
                f"{name} {statistics.median(values):8.2f} [{min(values):.2f}-{max(values):.2f}]"
            )
        if args.base:
            base, tree = (statistics.median(f[key] for f in rounds[n]) for n in ("A", "B"))
            cells.append(f"B/A {tree / base:.2f}")
        print(f"  {key:24} " + "   ".join(cells))
    if args.json:
        args.json.write_text(json.dumps({"read_mib": args.read_mib, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
