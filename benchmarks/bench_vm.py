"""A command in a throw-away VM: ``trio-qga-vm run``, virtme-ng and the bare boot, side by side.

    .venv/bin/python -m benchmarks.bench_vm [--rounds N] [--json FILE] [--no-vng] [--only NAME]

Each round runs, in turn (the order rotates from round to round, so that the
machine's noise hits all of them):

- ``trio-qga-vm run -- echo ready``, the command line as a user runs it: from its
  start to the first byte of output, and to its exit; with ``--timings`` its
  breakdown (QEMU's start, the kernel to the init, the init to the agent's
  start, the agent's start to its first answer);
- ``vng -r KERNEL --disable-kvm -- echo ready`` (virtme-ng, installed by the
  benchmark in a scratch venv; the kernel and its modules are the launcher's
  cached Debian package, unpacked in a scratch directory; kmod, which vng needs
  to find modules, is taken from Debian's package there if this machine lacks it);
- the bare boot: the same VM whose init runs the command itself instead of an
  agent, then powers off: QEMU, kernel and init with nothing of ours in Python;
- the agent alone: trio-qga started inside a guest (a VM booted for it), from
  its spawn to its first reply on a unix socket, as issue 27 measures it. The
  guest's own agent is trio-qga too, so this start finds its files in the
  guest's page cache;
- the agent's first start: trio-qga as ``trio-qga-vm run``'s guest starts it,
  from the init's spawn of it to its first answer (the launcher's own timings:
  its start in a fresh boot, reading its modules cold over 9p, with the
  launcher's read-ahead), in a boot that then runs nothing. Earlier the row
  timed a start from a harness in Python that the init ran instead of an
  agent: the harness's own start warmed the guest (its Python, the files it
  shares with the agent, a head start for the read-ahead), and in three runs
  that start took 0.1 to 0.6 s less than ``run``'s agent's (medians);
- 16 MiB copies: a file of 16 MiB written into the guest and read back out over
  virtio-serial in 1 MiB requests, by trio-qga and by qemu-ga (this machine's,
  on a port of its own in the same VM), the order alternating between rounds.

The report gives medians and each round's figures, trio-qga-vm's time as a share
of virtme-ng's, and its time above the sum of its parts measured alone (the bare
boot to the init, plus the agent alone; and plus the agent's first start). As
the agent's first start moves by a second from one boot to the next under TCG,
the report also gives ``run``'s own time beyond its boot to the init and its
agent's start, from the same run's timings ("own": the launcher's start, the
init, the program and the power-off), which moves far less. Under TCG on a
shared machine the figures say how these compare, not how fast a VM can be.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from agent.host.client import QgaClient
from agent.host.vm import BootFailed, VmConfig, boot_vm
from agent.host.vm.cache import cache_dir
from agent.host.vm.config import RUNDIR
from agent.host.vm.console import Step
from agent.host.vm.kernel import current_kernel
from benchmarks.guest_start import AGENT, timed_start

COMMAND = ["echo", "ready"]
FIRST_BYTE = b"ready"
TIMINGS = re.compile(
    r"boot: QEMU ([\d.]+) s, kernel ([\d.]+) s, init ([\d.]+) s, agent ([\d.]+) s;"
    r" first answer ([\d.]+) s"
)
COPY_SIZE = 16 * 1024 * 1024
COPY_CHUNK = 1024 * 1024  # bytes per guest-file-read and -write
REFERENCE_PORT = "org.qemu.guest_agent.reference"  # qemu-ga's, beside trio-qga's
VNG_VERSION = "virtme-ng==1.42"
TIMEOUT = 900.0  # seconds for any one run
Row = dict[str, float]
CONTENDERS = (
    "trio-qga-vm run",
    "bare boot",
    "agent alone",
    "agent first start",
    "16 MiB copies",
    "virtme-ng",
)


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[Row, str]:
    """(start to first byte and to exit, stderr) of ``command``."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env)
        assert process.stdout is not None
        output = b""
        first = None
        while chunk := os.read(process.stdout.fileno(), 4096):
            output += chunk
            if first is None and FIRST_BYTE in output:
                first = time.monotonic() - started
        status = process.wait(TIMEOUT)
        ended = time.monotonic() - started
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    if status or first is None:
        raise RuntimeError(f"{command[0]} failed ({status}): {output!r} {stderr[-2000:]}")
    return {"first byte": first, "exit": ended}, stderr


def ours() -> Row:
    command = [sys.executable, "-m", "agent.host.vm.cli", "run", "-q", "--timings", "--", *COMMAND]
    row, stderr = timed(command)
    found = TIMINGS.search(stderr)
    assert found, stderr
    parts = ("QEMU", "kernel", "init", "agent", "first answer")
    row.update({part: float(value) for part, value in zip(parts, found.groups(), strict=True)})
    # What run spends beyond its own boot to the init and its agent's start: the
    # launcher's start, the init, the program and the power-off.
    row["own"] = row["exit"] - (row["QEMU"] + row["kernel"] + row["agent"])
    return row


def bare_boot() -> Row:
    """The VM's init runs the command (and powers off) where the agent would start."""
    script = (
        'echo "trio-qga-vm: ran $(cut -d" " -f1 /proc/uptime)" > /dev/console;'
        f" exec {RUNDIR}/bin/busybox poweroff -f"
    )
    steps: dict[str, Step] = {}

    async def boot() -> Row:
        started = trio.current_time()
        try:
            async with boot_vm(VmConfig(agent=("sh", "-c", script)), on_step=record):
                raise RuntimeError("the bare boot's guest did not power off")
        except BootFailed:  # the guest powered off, as it should
            ended = trio.current_time() - started
        init, ran = steps["init"], steps["ran"]
        return {
            "QEMU": init.arrived - init.uptime - started,
            "to init": init.arrived - started,
            "first byte": ran.arrived - started,
            "exit": ended,
        }

    def record(step: Step) -> None:
        steps[step.name] = step

    return trio.run(boot)


def agent_alone() -> Row:
    """trio-qga's spawn to its first reply, inside a guest."""

    async def measure() -> float:
        async with boot_vm(VmConfig()) as vm:
            result = await vm.run(timed_start((AGENT, {})), check=True)
            return float(result.stdout)

    return {"agent alone": trio.run(measure)}


def agent_first_start() -> Row:
    """trio-qga's first start in a fresh boot, as ``run``'s agent starts: from the
    init's spawn of it to its first answer (the launcher's timings), in a boot
    that runs nothing after."""

    async def boot() -> float:
        async with boot_vm(VmConfig()) as vm:
            if vm.timings is None:
                raise RuntimeError(f"no timings on the console: {vm.console.tail()}")
            return vm.timings.agent

    return {"agent first start": trio.run(boot)}


def file_copies(round_number: int) -> Row:
    """Seconds to copy COPY_SIZE bytes in and out through each agent, in one VM."""
    data = os.urandom(COPY_SIZE)
    reference_agent = [
        "qemu-ga", "-d", "-m", "virtio-serial", "-p", f"/dev/virtio-ports/{REFERENCE_PORT}",
        "-f", "/tmp/qemu-ga.pid", "-t", "/tmp",
    ]  # fmt: skip

    async def copy(name: str, client: QgaClient, row: Row) -> None:
        client.channel.read_chunk = client.channel.write_chunk = COPY_CHUNK
        path = f"/tmp/copy-{name}"
        started = trio.current_time()
        await client.write_file(path, data)
        row[f"{name} in"] = trio.current_time() - started
        started = trio.current_time()
        back = await client.read_file(path)
        row[f"{name} out"] = trio.current_time() - started
        if back != data:
            raise RuntimeError(f"{name}: the file came back changed")

    async def measure() -> Row:
        async with boot_vm(VmConfig(ports=(REFERENCE_PORT,), request_timeout=300)) as vm:
            await vm.run(reference_agent, check=True)  # it forks into the background
            socket = str(vm.sockets[REFERENCE_PORT])
            reference = await QgaClient.connect_unix(socket, request_timeout=300)
            agents = [("trio-qga", vm.client), ("qemu-ga", reference)]
            row: Row = {}
            for name, client in agents[round_number % 2 :] + agents[: round_number % 2]:
                await copy(name, client, row)
            await reference.aclose()
            return row

    return trio.run(measure)


class Vng:
    """virtme-ng in a scratch venv, booting the launcher's kernel unpacked in a scratch dir."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        subprocess.run([sys.executable, "-m", "venv", str(scratch / "venv")], check=True)
        pip = [str(scratch / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--disable-pip-version-check", VNG_VERSION], check=True)
        kernel = trio.run(current_kernel, cache_dir(), print)
        if kernel.package is None:  # this machine's kernel: installed with its modules
            self.image = Path(f"/boot/vmlinuz-{kernel.version}")
        else:
            root = scratch / "kernel"
            subprocess.run(["dpkg", "-x", str(kernel.package), str(root)], check=True)
            self.image = root / "boot" / f"vmlinuz-{kernel.version}"
        self.path = f"{self._kmod()}:{scratch / 'venv' / 'bin'}:{os.environ['PATH']}"

    def _kmod(self) -> Path:
        """A directory with depmod and modprobe (vng resolves modules with them)."""
        tools = self.scratch / "tools"
        tools.mkdir()
        kmod = shutil.which("kmod")
        if kmod is None:
            unpacked = self.scratch / "kmod"
            subprocess.run(
                ["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", "kmod"],
                cwd=self.scratch,
                check=True,
            )
            [deb] = self.scratch.glob("kmod_*.deb")
            subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
            kmod = str(unpacked / "bin" / "kmod")
        for tool in ("depmod", "modprobe"):
            (tools / tool).symlink_to(kmod)
        return tools

    def run(self) -> Row:
        vng = str(self.scratch / "venv" / "bin" / "vng")
        command = [vng, "-r", str(self.image), "--disable-kvm", "--", *COMMAND]
        row, _ = timed(command, env={**os.environ, "PATH": self.path})
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--no-vng", action="store_true", help="skip virtme-ng")
    parser.add_argument(
        "--only",
        action="append",
        choices=CONTENDERS,
        help="run only this contender (repeatable)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-vm.") as scratch:
        contenders: dict[str, Callable[[int], Row]] = {
            "trio-qga-vm run": lambda _: ours(),
            "bare boot": lambda _: bare_boot(),
            "agent alone": lambda _: agent_alone(),
            "agent first start": lambda _: agent_first_start(),
            "16 MiB copies": file_copies,
        }
        if not args.no_vng:
            vng = Vng(Path(scratch))
            contenders["virtme-ng"] = lambda _: vng.run()
        ours()  # the cache filled, the bytecode compiled: not measured
        names = [name for name in contenders if name in (args.only or CONTENDERS)]
        rows: dict[str, list[Row]] = {name: [] for name in names}
        for round_number in range(args.rounds):
            order = names[round_number % len(names) :] + names[: round_number % len(names)]
            for name in order:
                rows[name].append(contenders[name](round_number))
                print(f"round {round_number + 1} {name}: {_show(rows[name][-1])}", flush=True)
    report = summary(rows)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"rounds": rows, "summary": report}, indent=2))
    return 0


def _show(row: Row) -> str:
    return ", ".join(f"{key} {value:.2f}" for key, value in row.items())


def summary(rows: dict[str, list[Row]]) -> dict[str, Any]:
    medians = {
        name: {key: round(statistics.median(row[key] for row in runs), 2) for key in runs[0]}
        for name, runs in rows.items()
    }
    report: dict[str, Any] = {"medians (s)": medians}
    mine = medians.get("trio-qga-vm run", {}).get("exit")
    if mine is not None and "virtme-ng" in medians:
        report["trio-qga-vm / virtme-ng (exit)"] = round(mine / medians["virtme-ng"]["exit"], 2)
    if mine is not None and "bare boot" in medians and "agent alone" in medians:
        parts = medians["bare boot"]["to init"] + medians["agent alone"]["agent alone"]
        report["sum of the parts alone (s)"] = round(parts, 2)
        report["trio-qga-vm above the sum (s)"] = round(mine - parts, 2)
    if mine is not None and "bare boot" in medians and "agent first start" in medians:
        parts = medians["bare boot"]["to init"] + medians["agent first start"]["agent first start"]
        report["sum of the parts, the agent's first start (s)"] = round(parts, 2)
        report["trio-qga-vm above that sum (s)"] = round(mine - parts, 2)
    if "own" in medians.get("trio-qga-vm run", {}):
        report["trio-qga-vm's own, beyond its boot to the init and its agent's start (s)"] = (
            medians["trio-qga-vm run"]["own"]
        )
    if "16 MiB copies" in medians:
        copies = medians["16 MiB copies"]
        rates = {key: round(COPY_SIZE / 1e6 / seconds, 1) for key, seconds in copies.items()}
        report["16 MiB copies (MB/s)"] = rates
        for way in ("in", "out"):
            ratio = rates[f"trio-qga {way}"] / rates[f"qemu-ga {way}"]
            report[f"16 MiB copy {way}: trio-qga / qemu-ga (MB/s)"] = round(ratio, 2)
    return report


if __name__ == "__main__":
    sys.exit(main())
