"""What the VM tests share: run-in-vm, the host's end of a guest port, the agent
as a guest runs it.

The VMs are ``../shared/vm/run-in-vm``'s (``RUN_IN_VM`` names another copy): this
machine's root, read-only, under a tmpfs overlay; TCG when KVM does not work. The
programs the guests run are beside this module (``vm_agent.py``, ``vm_guest.py``,
``vm_qe_guest.py``).
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.markers import require_marker

ROOT = Path(__file__).resolve().parents[2]
RUN_IN_VM = Path(os.environ.get("RUN_IN_VM", ROOT.parent / "shared" / "vm" / "run-in-vm"))
PORTS = {"virtio": "/dev/virtio-ports/org.qemu.guest_agent.0", "isa": "/dev/ttyS1"}
BOOT_DEADLINE = 300.0  # seconds from VM start to the agents' first answer (TCG, busy host)
# The VMs of vm_agent_command: TCG on a busy 2-core host, boot, then import trio.
BOOT_TIMEOUT = 240.0
REPLY_TIMEOUT = 30.0

Reply = dict[str, Any]


def run_in_vm_script() -> Path:
    """The run-in-vm script; fails in CI (which has it), skips loudly elsewhere. Only
    for tests marked ``vm``."""
    require_marker("vm")
    if RUN_IN_VM.is_file():
        return RUN_IN_VM
    message = f"run-in-vm not found at {RUN_IN_VM} (set RUN_IN_VM to its path)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def vm_agent_command(script: Path, sock: Path, *options: str) -> list[str]:
    """run-in-vm (with ``options``) serving trio-qga on the virtio port, wired to ``sock``."""
    return [
        str(script),
        *options,
        "--timeout",
        str(int(BOOT_TIMEOUT + 120)),
        "--qga-socket",
        str(sock),
        "--",
        sys.executable,
        str(Path(__file__).with_name("vm_agent.py")),
        PORTS["virtio"],
    ]


def installed_agent() -> list[str]:
    """trio-qga as a guest runs it: its installed command, its bytecode compiled.

    The guest sees this tree read-only: what is not compiled here would be
    compiled at every start there, which no installed agent does.
    """
    assert compileall.compile_dir(ROOT / "agent", quiet=1)
    command = shutil.which("trio-qga", path=str(Path(sys.executable).parent))
    assert command is not None, "trio-qga is not installed beside this interpreter"
    return [command]


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
