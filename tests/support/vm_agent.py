"""Guest side of ``test_vm_changes.py``: trio-qga embedded on the virtio-serial port.

Runs inside the VM (``run-in-vm``), serves one host session on the port and
then exits. The power command is busybox's ``poweroff -f``: the VM has busybox
as PID 1 and no systemd. Uses only the embedding API, so it needs no
transport module.

    python tests/support/vm_agent.py PORT
"""

from __future__ import annotations

import logging
import os
import sys

import trio

from agent import Agent, AgentConfig


async def main(port: str) -> None:
    config = AgentConfig(
        statedir="/run",
        pidfile=None,
        poweroff_command=("busybox", "poweroff", "-f"),
        hwclock_command=("/sbin/hwclock",),
    )
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    async with Agent(config) as agent:
        print("vm-agent: serving", flush=True)
        await agent.serve(trio.lowlevel.FdStream(fd))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="vm-agent %(levelname)s %(name)s: %(message)s")
    trio.run(main, sys.argv[1])
    print("vm-agent: the session ended without a power-off", flush=True)
