"""The CPU a request costs on the agent's request path, in-process, against the floor's.

    .venv/bin/python benchmarks/bench_request_path.py [--rounds 10] [--build NAME=PYTHON ...]
    .venv/bin/python benchmarks/bench_request_path.py --stages [--rounds 30]

Each build (by default the interpreter running this, with the working tree's
trio-qga) serves one end of ``trio.testing.memory_stream_pair()`` with
``Agent.serve``, and the floor (``benchmarks/stack_floor.py``) serves another
with its ``converse``; the same client, in the same thread, sends them the
requests of each row and reads the replies back. No socket, no system call,
no second process: what is left is the Python work of a request, framer,
dispatcher, handler and encoder, which the request rows of ``bench_core``
(``pipelined``, ``small-reads-cpu``, ``connect-cpu``) pay on top of the
kernel's, and which a busy machine disturbs far less. Each build runs in a
process of its own (its venv's interpreter; builds from ``benchmarks/ab.py``'s
cache work), rounds alternating between builds; a row gives the best round,
in microseconds of CPU per request (``time.thread_time``), and its ratio to
the floor's best in the same process.

Rows: ``pings``, 2,600 ``guest-ping`` requests sent in one write, replies
read back together (the ``pipelined`` row's shape); ``small-reads``, 1,024
``guest-file-read`` requests of 4 KiB, one at a time (``small-reads-cpu``).

With ``--stages``, instead, the CPU per ping of each stage of the request path
run alone over the 2,600 requests of one read (framing, the request's shape,
the command's lookup and checks, the schema's checks, the handler, the
encoding), in this process: what each request costs whatever the session
around it does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
PINGS = 2600
READS = 1024
ROWS = ("pings", "small-reads")

Serve = Callable[..., Awaitable[None]]


class _Script(trio.abc.Stream):
    """A stream whose reads come from ``conversation`` (a generator given the
    stream, so that it can look at the last reply), then the end of the
    stream; its writes are kept only as the last reply. The server never
    waits, so its CPU is all its own work (and a checkpoint per call, as trio's
    contract asks of every stream)."""

    def __init__(self, conversation: Callable[[_Script], Iterator[bytes]]) -> None:
        self.reads = conversation(self)
        self.last = b""  # the last write
        self.sent = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if b'"error"' in data:
            raise RuntimeError(f"an error reply: {bytes(data[:200])!r}")
        self.last = bytes(data)
        self.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return next(self.reads, b"")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _pings(stream: _Script) -> Iterator[bytes]:
    yield b'{"execute":"guest-ping"}\n' * PINGS


def _small_reads(path: Path) -> Callable[[_Script], Iterator[bytes]]:
    def conversation(stream: _Script) -> Iterator[bytes]:
        opening = {"execute": "guest-file-open", "arguments": {"path": str(path)}}
        yield json.dumps(opening).encode() + b"\n"
        handle = json.loads(stream.last)["return"]  # the reply went out before this read
        read = {"execute": "guest-file-read", "arguments": {"handle": handle, "count": 4096}}
        request = json.dumps(read).encode() + b"\n"
        for _ in range(READS):
            yield request

    return conversation


async def _per_request(
    serve: Serve, conversation: Callable[[_Script], Iterator[bytes]], requests: int
) -> float:
    """CPU seconds per request for ``serve`` to answer ``conversation``."""
    stream = _Script(conversation)
    started = time.thread_time()
    await serve(stream)
    spent = time.thread_time() - started
    if not stream.sent:
        raise RuntimeError("no reply was sent")
    return spent / requests


async def _round() -> dict[str, float]:
    """One round in this process: each row for the agent and for the floor."""
    from agent import Agent, AgentConfig

    sys.path.append(str(HERE.parent))  # after the build's own packages
    from benchmarks import stack_floor

    async def floor(stream: trio.abc.Stream) -> None:
        await stack_floor.converse(stream)

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmp:
        path = Path(tmp) / "file"
        path.write_bytes(os.urandom(READS * 4096))
        async with Agent(AgentConfig(statedir=tmp, plugins=False)) as agent:
            for who, serve in (("", agent.serve), (" floor", floor)):
                # A session first, unmeasured: what an agent loads after its
                # first reply (its commands beyond sync, ping and info) and
                # whatever is built on first use is not a request's cost.
                await _per_request(serve, _small_reads(path), READS)
                figures["pings" + who] = await _per_request(serve, _pings, PINGS)
                figures["small-reads" + who] = await _per_request(serve, _small_reads(path), READS)
    return figures


def _worker() -> None:
    print(json.dumps(trio.run(_round)))


async def _stages(rounds: int) -> dict[str, float]:
    """CPU per pipelined ping of each stage of the agent's request path, run
    alone over the requests of one read (best of ``rounds``, microseconds):
    what the request path does for every request, whatever surrounds it."""
    from agent import Agent, AgentConfig
    from agent.wire.encoder import ReturnReply, encode_reply
    from agent.wire.framer import Framer, Message
    from agent.wire.request import parse_request

    data = b'{"execute":"guest-ping"}\n' * PINGS
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmp:
        async with Agent(AgentConfig(statedir=tmp, plugins=False)) as agent:
            config = agent.context.config
            framer = Framer(max_size=config.max_message_size, max_depth=config.max_depth)
            requests = [event.value for event in framer.receive(data) if type(event) is Message]
            dispatcher = agent.dispatcher
            command = dispatcher._command("guest-ping")
            reply = dispatcher.start(requests[0], trace=False)
            assert isinstance(reply, ReturnReply)
            stages: dict[str, Callable[[], object]] = {
                "framing (the 0xFF rules, JSON)": lambda: framer.receive(data),
                "the request's shape": lambda: [parse_request(r) for r in requests],
                "the command: lookup, freeze, filter": lambda: [
                    dispatcher._command("guest-ping") for _ in requests
                ],
                "its arguments against the schema": lambda: [
                    dispatcher._arguments(command, {}) for _ in requests
                ],
                "the handler": lambda: [command.function(dispatcher.ctx) for _ in requests],
                "its value against the schema": lambda: [
                    dispatcher._reply(command, {}, None) for _ in requests
                ],
                "dispatcher.start, all of the five above": lambda: [
                    dispatcher.start(r, trace=False) for r in requests
                ],
                "encoding the reply": lambda: [encode_reply(reply) for _ in requests],
            }
            best: dict[str, float] = {}
            for name, stage in stages.items():
                for _ in range(rounds):
                    started = time.thread_time()
                    stage()
                    spent = (time.thread_time() - started) / PINGS * 1e6
                    best[name] = min(best.get(name, spent), spent)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per build (default 10)")
    parser.add_argument(
        "--build",
        action="append",
        metavar="NAME=PYTHON",
        help="a build: its name and its venv's interpreter (repeatable; default: this one)",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="instead: the CPU of each stage of a pipelined ping, in this process",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return 0
    if args.stages:
        print("| stage of a pipelined ping | us of CPU (best round) |")
        print("| --- | ---: |")
        for name, spent in trio.run(_stages, args.rounds).items():
            print(f"| {name} | {spent:.3f} |")
        return 0
    builds = dict(spec.split("=", 1) for spec in args.build or [f"trio-qga={sys.executable}"])
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    for number in range(args.rounds):
        order = list(builds.items())
        for name, python in order if number % 2 == 0 else order[::-1]:
            out = subprocess.run(
                [python, str(Path(__file__).resolve()), "--worker"],
                cwd=tempfile.gettempdir(),  # not the project's root: the build's own agent
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rounds[name].append(json.loads(out))
    print("| build | row | agent (us per request) | floor | agent / floor |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, figures in rounds.items():
        for row in ROWS:
            agent = min(f[row] for f in figures) * 1e6
            floor = min(f[f"{row} floor"] for f in figures) * 1e6
            print(f"| {name} | {row} | {agent:.2f} | {floor:.2f} | {agent / floor:.2f}x |")
    if len(builds) == 2:
        first, second = builds
        for row in ROWS:
            ratios = [b[row] / a[row] for a, b in zip(rounds[first], rounds[second], strict=True)]
            print(f"{row}: {second}/{first} per round, median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
