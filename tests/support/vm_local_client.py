"""Runs inside the test VM (``tests/test_vm_transports.py``): a tool of the guest
talking to trio-qga over its local unix socket while the host has the ports.

    vm_local_client.py SOCKET CONTROL_DIR

It waits for ``CONTROL_DIR/handle`` (a guest-file handle the host opened over
virtio-serial), then, over the socket: 0xFF and guest-sync-delimited, guest-ping,
a read of that handle and its close. What it got goes to
``CONTROL_DIR/local.json`` (written whole, then renamed). Stdlib only: it
starts in a second under emulation.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

DEADLINE = 600.0  # seconds: the VM boots under TCG on a busy host


def wait_for(predicate: Any, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.1)


class Session:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the agent closed the socket")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(self.line())


def main() -> int:
    path, control = sys.argv[1], Path(sys.argv[2])
    wait_for(lambda: (control / "handle").exists(), "the host's handle")
    handle = int((control / "handle").read_text())
    wait_for(lambda: Path(path).exists(), f"{path}")
    session = Session(path)
    session.sock.sendall(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":4242}}\n')
    sync = session.line().decode("latin-1")
    results = {
        "sync": sync,
        "ping": session.execute("guest-ping"),
        "read": session.execute("guest-file-read", {"handle": handle, "count": 1024}),
        "close": session.execute("guest-file-close", {"handle": handle}),
    }
    session.sock.close()
    partial = control / ".local.json"
    partial.write_text(json.dumps(results))
    partial.rename(control / "local.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
