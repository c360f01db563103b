"""What the VM tests share: the VMs' layout for agents under test, starting a program
in a guest, the host's end of a guest port, the agent as a guest runs it.

The VMs are the project's own launcher's (``agent.host.vm``, docs/vm.md): this
machine's root, read-only, under a tmpfs overlay; TCG when KVM does not work. Tests
get them from the pytest plugin's ``qga_vm`` and ``qga_vm_factory`` fixtures, which
need the ``vm`` marker (``markers.py``). The programs the guests run are beside this
module (``vm_guest.py``, ``vm_qe_guest.py``, ``vm_local_client.py``).
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.host.vm.background import BackgroundVm
from agent.host.vm.config import AGENT_PORT as AGENT_PORT  # the agents under test's port
from agent.host.vm.config import VmConfig

ROOT = Path(__file__).resolve().parents[2]
CONTROL_PORT = "trio-qga-vm.0"  # the launcher's own agent, which starts the guest's side
PORTS = {"virtio": f"/dev/virtio-ports/{AGENT_PORT}", "isa": "/dev/ttyS1"}
BOOT_DEADLINE = 300.0  # seconds from an agent's start to its first answer (TCG, busy host)
REPLY_TIMEOUT = 30.0

Reply = dict[str, Any]


def agents_under_test(*shares: Path, **options: Any) -> VmConfig:
    """A VM whose usual agent port and ISA serial line (``PORTS``) are left to the
    agents a test starts; the launcher's own agent is on a port of its own, through
    which :func:`spawn` starts them. ``shares``: host directories shared read-write."""
    return VmConfig(
        agent_port=CONTROL_PORT, ports=(AGENT_PORT,), isa_serial=True, shares=shares, **options
    )


def spawn(machine: BackgroundVm, argv: Sequence[str], log: Path, env: Sequence[str] = ()) -> int:
    """Start ``argv`` in the guest in the background (guest-exec: no time limit),
    with ``env`` (``NAME=VALUE``) added to the environment and its output into
    ``log``; its pid."""
    script = f'exec env "$@" > {log} 2>&1'
    arguments = {"path": "/bin/sh", "arg": ["-c", script, "sh", *env, *argv]}
    started: dict[str, int] = machine.call(
        lambda guest: guest.client.execute("guest-exec", arguments)
    )
    return started["pid"]


def installed_agent() -> list[str]:
    """trio-qga as a guest runs it: its installed command, its bytecode compiled.

    The guest sees this tree read-only: what is not compiled here would be
    compiled at every start there, which no installed agent does.
    """
    assert compileall.compile_dir(ROOT / "agent", quiet=1)
    command = shutil.which("trio-qga", path=str(Path(sys.executable).parent))
    assert command is not None, "trio-qga is not installed beside this interpreter"
    return [command]


def private_tempdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The launcher's temporary directory (its VMs' own directories), for this test
    alone, in this process and the processes it starts: what is left there is this
    test's, whatever other VMs run on the machine."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    monkeypatch.setenv("TMPDIR", str(directory))
    return directory


def vm_directories(directory: Path) -> frozenset[str]:
    """The VMs' own directories in ``directory`` (one each while it runs)."""
    return frozenset(name for name in os.listdir(directory) if name.startswith("trio-qga-vm."))


def children(pid: int) -> frozenset[int]:
    """The children of process ``pid`` (a QEMU left running would be one of ours)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as listed:
            found.update(int(child) for child in listed.read().split())
    return frozenset(found)


class HostEnd:
    """The host side of one guest port: the unix socket QEMU listens on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.ids = iter(range(1, 1 << 30))

    def connect(self, deadline: float) -> None:
        while True:  # QEMU creates the socket a moment after it starts
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                assert time.monotonic() < deadline, f"{self.path} never accepted"
                time.sleep(0.05)
                continue
            self.sock, self.buffer = sock, b""
            return

    def close(self) -> None:
        assert self.sock is not None
        self.sock.close()
        self.sock = None

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def line(self, timeout: float = REPLY_TIMEOUT) -> bytes | None:
        """The next reply line, or None if none comes within ``timeout``."""
        assert self.sock is not None
        end = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionError("QEMU closed the socket")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def sync(self, deadline: float) -> bytes:
        """0xFF + guest-sync-delimited until the agent answers; its reply.

        Retried because a serial line drops what arrives before the agent
        opens it; what else comes back meanwhile (echoes, errors) is skipped.
        """
        while True:
            sync_id = next(self.ids)
            request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
            self.send(b"\xff" + json.dumps(request).encode() + b"\n")
            retry = time.monotonic() + 2
            while time.monotonic() < retry:
                line = self.line(retry - time.monotonic())
                if line is not None and line.endswith(f'{{"return": {sync_id}}}'.encode()):
                    # From its delimiter: a serial line may have echoed bytes before it.
                    return line[line.rfind(b"\xff") :]
            assert time.monotonic() < deadline, "the agent never answered guest-sync-delimited"

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Reply:
        request: dict[str, Any] = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        self.send(json.dumps(request).encode() + b"\n")
        line = self.line()
        assert line is not None, f"no reply to {name}"
        reply: Reply = json.loads(line)
        return reply
