"""Pathological input: CPU time an agent spends on 100 MiB of one shape, side by side.

    .venv/bin/python benchmarks/bench_pathological.py [--size MIB] [--leash S] [--json FILE]

Each shape goes to a fresh trio-qga and a fresh qemu-ga over a unix socket,
followed by a newline, 0xFF and a guest-sync-delimited; the figure is the CPU
time (user + system) the agent process used from the first byte to the sync's
reply, read from /proc through psutil, with the number of replies it sent
before the sync's. An agent that has not answered within the leash is killed
and shown as such. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from benchmarks.bench_core import AGENTS, Agent, Client, started

MiB = 1 << 20
SYNC_ID = 424242


def repeated(unit: bytes, size: int, head: bytes = b"") -> bytes:
    body = unit * ((size - len(head)) // len(unit) + 1)
    return head + body[: size - len(head)]


SHAPES: dict[str, Callable[[int], bytes]] = {
    "open brackets `[[[...`": lambda size: repeated(b"[", size),
    'deep objects `{"a":{"a":...`': lambda size: repeated(b'{"a":', size),
    "long string (over the 64 MiB cap)": lambda size: repeated(
        b"a", size, b'{"execute":"guest-ping","id":"'
    ),
    "bracket pairs after an error `[][]...`": lambda size: repeated(b"[]", size, b'{"a":x,"b":'),
    "strings after an error": lambda size: repeated(b'"s",', size, b'{"a":x,"b":['),
    'numbers `{"a":[0,0,...` (over the cap)': lambda size: repeated(b"0,", size, b'{"a":['),
    "random bytes": lambda size: repeated(bytes(range(256))[::7] * 7, size),
    "tiny requests (guest-ping)": lambda size: repeated(b'{"execute":"guest-ping"}', size),
}


class Run:
    """One shape sent to one agent: a sender thread, a reader counting reply lines."""

    def __init__(self, sock: Path, data: bytes) -> None:
        self.client = Client(sock, time.monotonic() + 30)
        self.data = data
        self.replies = 0
        self.done = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._send, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()

    def _send(self) -> None:
        request = {"execute": "guest-sync-delimited", "arguments": {"id": SYNC_ID}}
        try:
            self.client.sock.sendall(self.data)
            self.client.sock.sendall(b"\n\xff" + json.dumps(request).encode() + b"\n")
        except OSError:
            pass  # the agent died or was killed: the reader reports it

    def _read(self) -> None:
        """Count reply lines until the sync's reply, the last one, ends the data."""
        expected = b"\xff" + json.dumps({"return": SYNC_ID}).encode() + b"\n"
        tail = b""
        try:
            while data := self.client.sock.recv(1 << 20):
                self.replies += data.count(b"\n")
                tail = (tail + data)[-len(expected) :]
                if tail == expected:
                    self.replies -= 1  # the sync's own reply
                    self.done.set()
                    return
        except OSError:
            pass

    def close(self) -> None:
        self.client.sock.shutdown(socket.SHUT_RDWR)
        self.client.close()


def measure_one(agent: Agent, data: bytes, leash: float) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory() as tmp, started(agent, Path(tmp)) as (proc, sock, _):
        process = psutil.Process(proc.pid)
        before = process.cpu_times()
        t0 = time.perf_counter()
        run = Run(sock, data)
        run.start()
        finished = run.done.wait(leash)
        wall = time.perf_counter() - t0
        after = process.cpu_times() if proc.poll() is None else None
        run.close()
        if after is None:
            return {"outcome": f"exited with status {proc.returncode}", "wall": wall}
        cpu = (after.user - before.user) + (after.system - before.system)
        outcome = "answered" if finished else f"no sync reply within {leash:.0f} s (killed)"
        return {"outcome": outcome, "cpu": cpu, "wall": wall, "replies": run.replies}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100, help="MiB per shape (default 100)")
    parser.add_argument("--leash", type=float, default=120, help="seconds per agent and shape")
    parser.add_argument("--only", help="run the shapes whose name contains this text")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float | int | str]]] = {}
    print(f"| shape ({args.size} MiB) | trio-qga CPU | replies | qemu-ga CPU | replies |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, make in SHAPES.items():
        if args.only and args.only not in name:
            continue
        data = make(args.size * MiB)
        results[name] = {agent.name: measure_one(agent, data, args.leash) for agent in AGENTS}
        cells = []
        for agent in AGENTS:
            figures = results[name][agent.name]
            if figures["outcome"] == "answered":
                cells += [f"{figures['cpu']:.2f} s", str(figures["replies"])]
            else:
                cells += [str(figures["outcome"]), str(figures.get("replies", "-"))]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
