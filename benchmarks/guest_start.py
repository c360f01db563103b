"""A server's spawn to its first reply, timed inside a guest: the harness that
``bench_vm`` (the agent alone, its first start) and ``bench_vm_agent_start``
(the agent beside the floor) run in their VMs."""

from __future__ import annotations

import json
import sys

# Run in the guest as ``python -c TIMED_START SERVER``, SERVER being the JSON of
# (command, environment) where "{path}" in the command is the socket's path:
# prints the seconds from the spawn to the first reply to guest-sync-delimited.
TIMED_START = """\
import json, os, socket, subprocess, sys, time
server, env = json.loads(sys.argv[1])
path = "/run/bench-start.sock"
if os.path.exists(path):
    os.unlink(path)
started = time.monotonic()
process = subprocess.Popen(
    [arg.replace("{path}", path) for arg in server], env={**os.environ, **env},
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while True:
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        break
    except OSError:
        client.close()
        time.sleep(0.005)
client.sendall(b'\\xff{"execute": "guest-sync-delimited", "arguments": {"id": 1}}\\n')
reply = b""
while not reply.lstrip(b"\\xff").endswith(b"\\n"):
    reply += client.recv(4096)
print(time.monotonic() - started)
process.terminate()
process.wait()
"""
# trio-qga as the guest starts it, on a unix socket.
AGENT = (
    sys.executable, "-m", "agent", "-t", "/run", "-f", "/run/bench-start.pid",
    "--transport", "unix-listen:{path}",
)  # fmt: skip

Server = tuple[tuple[str, ...], dict[str, str]]  # a command and its environment


def timed_start(server: Server, script: str = TIMED_START) -> list[str]:
    """The guest's command line that times ``server``'s start with ``script``."""
    return [sys.executable, "-c", script, json.dumps(server)]
