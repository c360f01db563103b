"""Runs inside the test VM (``tests/test_vm.py``): agents in phases, on the host's cue.

    vm_guest.py CONTROL_DIR PLAN_JSON

PLAN_JSON is a list of phases ``{"name": ..., "agents": {label: {"argv": [...],
"pidfile": path or null, "ends_by_itself": bool}}}``. For each phase the agents
start together; every 0.25 s their CPU time is appended to
``CONTROL_DIR/<phase>-<label>.cpu``; when the host creates
``CONTROL_DIR/<phase>.stop``, each daemon gets SIGTERM (a program that
``ends_by_itself`` is waited for instead: its last result may be written while
it is still exiting), and its exit status and whether its pid file is left go to
``CONTROL_DIR/<phase>.exit``.
CONTROL_DIR is shared read-write with the host (9p without cache, so the
host's files show at once). Stdlib only: it starts in a second under
emulation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SAMPLE_INTERVAL = 0.25
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_phase(control: Path, name: str, agents: dict[str, dict[str, object]]) -> None:
    procs = {}
    for label, agent in agents.items():
        log = open(control / f"{name}-{label}.stderr", "wb")  # noqa: SIM115 (lives with the process)
        argv = [str(arg) for arg in agent["argv"]]  # type: ignore[attr-defined]
        procs[label] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    samples = {label: open(control / f"{name}-{label}.cpu", "a") for label in procs}  # noqa: SIM115
    stop = control / f"{name}.stop"
    while not stop.exists():
        now = time.monotonic()
        for label, proc in procs.items():
            if proc.poll() is None:
                samples[label].write(f"{now:.3f} {cpu_seconds(proc.pid):.2f}\n")
                samples[label].flush()
        time.sleep(SAMPLE_INTERVAL)
    for label, proc in procs.items():
        if proc.poll() is None and not agents[label].get("ends_by_itself"):
            proc.send_signal(signal.SIGTERM)
    results: dict[str, dict[str, object]] = {}
    for label, proc in procs.items():
        try:
            status: object = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = f"still running 60 s after SIGTERM (then {proc.wait()})"
        pidfile = agents[label].get("pidfile")
        results[label] = {
            "status": status,
            "pidfile_left": bool(pidfile) and Path(str(pidfile)).exists(),
        }
    partial = control / f".{name}.exit"  # renamed: the host never sees half a file
    partial.write_text(json.dumps(results))
    partial.rename(control / f"{name}.exit")


def main() -> int:
    control = Path(sys.argv[1])
    for phase in json.loads(sys.argv[2]):
        run_phase(control, phase["name"], phase["agents"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
