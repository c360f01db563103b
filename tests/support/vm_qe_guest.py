"""Runs inside the VM of ``tests/test_vm_qe.py``: the guest's side of the QE checks.

    vm_qe_guest.py CONFIG_JSON

Started through the launcher's own agent (the VM loads the disk's driver at
boot, and ext4 when it is mounted): starts udev (so that both agents see the
disk's serial, as on a real guest), mounts the virtio disk,
writes one fsfreeze hook per agent, then runs trio-qga on the virtio-serial
port and qemu-ga on the ISA serial line side by side until the VM is stopped.
Stdlib only: it starts in a second under emulation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORK = Path("/run/qe")
HOOK = """#!/bin/sh
echo "$(date +%s) {agent} fsfreeze hook: $1" >> /run/qe/{agent}-hook.log
"""


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def main() -> int:
    config = json.loads(sys.argv[1])
    run("/lib/systemd/systemd-udevd", "--daemon")  # returns once it listens
    run("udevadm", "trigger", "--action=add", "--subsystem-match=block")
    run("udevadm", "settle", "--timeout=60")
    os.makedirs(config["mountpoint"], exist_ok=True)
    run("mount", "-t", "ext4", config["disk"], config["mountpoint"])
    WORK.mkdir(exist_ok=True)
    for agent in ("trio", "qemu"):
        (WORK / agent).mkdir()
        hook = WORK / f"{agent}-hook"
        hook.write_text(HOOK.format(agent=agent))
        hook.chmod(0o755)
    agents = {}
    agents["trio"] = [
        sys.executable,
        "-m",
        "agent",
        "-m",
        "virtio-serial",
        "-p",
        config["virtio"],
        "-f",
        str(WORK / "trio.pid"),
        "-l",
        str(WORK / "trio.log"),
        "--poweroff-command",
        "busybox poweroff -f",
        "-v",
        "-F" + str(WORK / "trio-hook"),
        "-t",
        str(WORK / "trio"),
    ]
    agents["qemu"] = [
        config["qemu_ga"],
        "-m",
        "isa-serial",
        "-p",
        config["isa"],
        "-f",
        str(WORK / "qemu.pid"),
        "-l",
        str(WORK / "qemu.log"),
        "-v",
        "-F" + str(WORK / "qemu-hook"),
        "-t",
        str(WORK / "qemu"),
    ]
    procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL) for argv in agents.values()]
    print("vm-qe: agents started", flush=True)
    while all(proc.poll() is None for proc in procs):
        time.sleep(1)
    print(f"vm-qe: an agent stopped: {[proc.returncode for proc in procs]}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
