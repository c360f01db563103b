"""The guest's root over 9p or over virtiofs: ``trio-qga-vm run -- true``, one after the other.

    .venv/bin/python -m benchmarks.bench_vm_root [--rounds N] [--json FILE]

Each round runs ``trio-qga-vm run -q --timings --root-fs FS -- true`` once per root
transport, the order alternating from round to round, after one boot of each
that is not counted (it builds the initramfs of its modules, if missing). For
each: the command's wall time, the first answer after QEMU's start and the
boot's breakdown (``--timings``). The report gives medians and every round:
``AUTO_PREFERS_VIRTIOFS`` in ``agent/host/vm/virtiofs.py`` follows them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TRANSPORTS = ("9p", "virtiofs")
TIMINGS = re.compile(
    r"boot: QEMU ([\d.]+) s, kernel ([\d.]+) s, init ([\d.]+) s, agent ([\d.]+) s;"
    r" first answer ([\d.]+) s"
)
KEYS = ("QEMU", "kernel", "init", "agent", "first answer")


def one(transport: str) -> dict[str, float]:
    command = [sys.executable, "-m", "agent.host.vm.cli", "run", "-q", "--timings"]
    command += ["--root-fs", transport, "--", "true"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    took = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"{transport}: status {done.returncode}\n{done.stderr}")
    found = TIMINGS.search(done.stderr)
    if found is None:
        raise SystemExit(f"{transport}: no timings in\n{done.stderr}")
    row = dict(zip(KEYS, map(float, found.groups()), strict=True))
    return {**row, "run -- true": round(took, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="the report, also as JSON here")
    args = parser.parse_args(argv)
    for transport in TRANSPORTS:
        one(transport)  # warm: the initramfs built, the plugin record written
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in TRANSPORTS}
    for index in range(args.rounds):
        order = TRANSPORTS if index % 2 == 0 else TRANSPORTS[::-1]
        for transport in order:
            row = one(transport)
            runs[transport].append(row)
            print(f"round {index + 1} {transport}: {row}", file=sys.stderr, flush=True)
    medians = {
        name: {key: round(statistics.median(row[key] for row in rows), 2) for key in rows[0]}
        for name, rows in runs.items()
    }
    report: dict[str, Any] = {"medians (s)": medians, "rounds": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
