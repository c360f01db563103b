"""Copying files through libvirt: trio-qga and qemu-ga side by side, through one client.

    sudo .venv/bin/python benchmarks/bench_libvirt_transfer.py [--rounds N] [--size MIB]
        [--chunks READ/WRITE,...]
    .venv/bin/python benchmarks/bench_libvirt_transfer.py --connect URI \\
        --domain qemu-ga=NAME --domain trio-qga=NAME ...

Without ``--connect`` it boots two TCG domains as ``tests/test_libvirt.py`` does
(libvirt daemons of its own, the VM launcher's kernel; a few minutes), alike but for their
agent. It copies a file into each guest (``put``) and out of it (``get``) with
:class:`agent.host.client.QgaClient` through libvirt, rounds alternating between the
agents so that the noise of a shared machine hits both, once per pair of chunk sizes
(``--chunks 48/48,384/96``: KiB per guest-file-read / guest-file-write; the client's
own by default). For the domains it booted, it also gives the CPU time of each QEMU
(the guest: its kernel, its agent, the device emulation) and of libvirtd per copy. Also
reported: one small request's round trip (guest-ping), the floor of every piece.
Figures are reported as medians and ratios, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.host.client import QgaClient  # noqa: E402
from agent.host.libvirt_channel import READ_CHUNK, WRITE_CHUNK  # noqa: E402
from tests.support.libvirt_host import GuestDomain, LibvirtHost  # noqa: E402
from tests.support.reference import qemu_ga_binary  # noqa: E402

AGENTS = ("qemu-ga", "trio-qga")
GUEST = ROOT / "tests" / "support" / "libvirt-guest"
PORT = "/dev/virtio-ports/org.qemu.guest_agent.0"
BOOT_DEADLINE = 300.0
TIMEOUT = 120.0
KIB = 1024
MIB = 1024 * KIB
PINGS = 30
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Setup:
    """Where the domains are; the pids whose CPU time is counted, when known."""

    uri: str
    names: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)  # agent or "libvirtd" -> pid


@contextmanager
def booted(base: Path) -> Iterator[Setup]:
    """libvirt and one domain per agent, its agent answering; destroyed at the end."""
    host = LibvirtHost(base / "libvirt")
    try:
        host.start()
        commands = {
            "qemu-ga": [qemu_ga_binary(), "-f", "/run/qemu-ga.pid"],
            "trio-qga": [sys.executable, "-m", "agent", "-f", "/run/trio-qga.pid"],
        }
        setup = Setup(host.uri, {})
        for agent in AGENTS:
            command = [str(GUEST), *commands[agent], "-m", "virtio-serial", "-p", PORT]
            name = f"bench-{agent}-{os.getpid()}"
            domain = GuestDomain(name, base / agent, [*command, "-t", "/run"])
            created = host.virsh("create", str(domain.prepare()))
            if created.returncode:
                raise RuntimeError(created.stderr)
            setup.names[agent] = name
        deadline = time.monotonic() + BOOT_DEADLINE
        for name in setup.names.values():
            while host.virsh("qemu-agent-command", name, '{"execute":"guest-ping"}').returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: no agent")
                time.sleep(0.5)
        run = host.base / "run"
        setup.pids = {
            agent: int((run / "qemu" / f"{name}.pid").read_text())
            for agent, name in setup.names.items()
        }
        setup.pids["libvirtd"] = int((host.base / "libvirtd.pid").read_text())
        yield setup
    finally:
        host.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class Copy:
    seconds: float
    guest_cpu: float | None = None  # the agent's QEMU
    libvirtd_cpu: float | None = None


async def ping_seconds(client: QgaClient) -> float:
    """The median round trip of one small request."""
    times = []
    for _ in range(PINGS):
        started = time.perf_counter()
        await client.ping()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def copy(client: QgaClient, setup: Setup, agent: str, direction: str, local: Path) -> Copy:
    pids = {"guest": setup.pids.get(agent), "libvirtd": setup.pids.get("libvirtd")}
    before = {key: cpu_seconds(pid) for key, pid in pids.items() if pid}
    started = time.perf_counter()
    if direction == "put":
        await client.put_file(str(local), "/run/bench")
    else:
        await client.get_file("/run/bench", str(local))
    taken = Copy(time.perf_counter() - started)
    if before:
        taken.guest_cpu = cpu_seconds(pids["guest"] or 0) - before["guest"]
        taken.libvirtd_cpu = cpu_seconds(pids["libvirtd"] or 0) - before["libvirtd"]
    return taken


Key = tuple[str, str, int, int]  # direction, agent, read chunk, write chunk


async def measure(setup: Setup, args: argparse.Namespace, work: Path) -> dict[Key, list[Copy]]:
    source = work / "source"
    source.write_bytes(os.urandom(int(args.size * MIB)))
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    clients = {
        agent: await QgaClient.connect_libvirt(setup.uri, name, request_timeout=TIMEOUT)
        for agent, name in setup.names.items()
    }
    copies: dict[Key, list[Copy]] = {}
    try:
        for agent, client in clients.items():
            print(f"{agent}: guest-ping {await ping_seconds(client) * 1e3:.1f} ms", flush=True)
        for round_ in range(args.rounds):
            order = AGENTS if round_ % 2 == 0 else AGENTS[::-1]
            for read_chunk, write_chunk in args.chunks:
                for agent in order:
                    client = clients[agent]
                    client.channel.read_chunk = read_chunk * KIB
                    client.channel.write_chunk = write_chunk * KIB
                    for direction in ("put", "get"):
                        local = source if direction == "put" else work / f"back-{agent}"
                        taken = await copy(client, setup, agent, direction, local)
                        key = (direction, agent, read_chunk, write_chunk)
                        copies.setdefault(key, []).append(taken)
                        print(
                            f"  {direction} {read_chunk}/{write_chunk} KiB {agent}:"
                            f" {taken.seconds:.2f} s",
                            flush=True,
                        )
                    back = hashlib.sha256((work / f"back-{agent}").read_bytes()).hexdigest()
                    if back != expected:
                        raise RuntimeError(f"{agent}: get gave other bytes")
    finally:
        for client in clients.values():
            await client.aclose()
    return copies


def median(values: list[float | None]) -> float:
    return statistics.median(value for value in values if value is not None)


def table(copies: dict[Key, list[Copy]], args: argparse.Namespace) -> str:
    with_cpu = all(copy.guest_cpu is not None for found in copies.values() for copy in found)
    lines = [
        f"{args.size:g} MiB, medians of {args.rounds} rounds; chunks in KiB (read/write)",
        f"{'':4} {'chunks':>9}  {'seconds':^19} {'trio/qemu':>9}"
        + (f"  {'guest CPU s':^17} {'libvirtd CPU s':^17}" if with_cpu else ""),
        f"{'':4} {'':>9}  {'qemu-ga':>9} {'trio-qga':>9} {'':>9}"
        + (f"  {'qemu-ga':>8} {'trio-qga':>8} {'qemu-ga':>8} {'trio-qga':>8}" if with_cpu else ""),
    ]
    for direction in ("put", "get"):
        for read_chunk, write_chunk in args.chunks:
            found = {a: copies[direction, a, read_chunk, write_chunk] for a in AGENTS}
            seconds = {a: median([c.seconds for c in found[a]]) for a in AGENTS}
            line = (
                f"{direction:4} {f'{read_chunk}/{write_chunk}':>9}  {seconds['qemu-ga']:9.2f}"
                f" {seconds['trio-qga']:9.2f} {seconds['trio-qga'] / seconds['qemu-ga']:8.2f}x"
            )
            if with_cpu:
                line += "  " + " ".join(
                    f"{median([getattr(c, what) for c in found[a]]):8.2f}"
                    for what in ("guest_cpu", "libvirtd_cpu")
                    for a in AGENTS
                )
            lines.append(line)
    return "\n".join(lines)


def chunk_pairs(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        read, _, write = item.partition("/")
        pairs.append((int(read), int(write or read)))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=float, default=3, help="file size in MiB (default 3)")
    parser.add_argument(
        "--chunks",
        type=chunk_pairs,
        default=[(READ_CHUNK // KIB, WRITE_CHUNK // KIB)],
        help="READ/WRITE KiB pairs, comma-separated (default: the client's)",
    )
    parser.add_argument("--connect", metavar="URI", help="use running domains of this libvirt")
    parser.add_argument(
        "--domain", action="append", default=[], metavar="AGENT=NAME", help="with --connect"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-libvirt-") as tmp:
        work = Path(tmp)
        if args.connect:
            names = dict(item.split("=", 1) for item in args.domain)
            copies = trio.run(measure, Setup(args.connect, names), args, work)
        else:
            with booted(work) as setup:
                copies = trio.run(measure, setup, args, work)
    print(table(copies, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
