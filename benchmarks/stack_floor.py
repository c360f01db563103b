"""The floor of the stack (trio and pydantic): a bare server answering the benchmark's requests.

    python benchmarks/stack_floor.py unix-listen:PATH
    python benchmarks/stack_floor.py virtio-serial:PATH

It does what any agent built on trio must do for them and nothing more: trio's
own streams (``serve_listeners`` over a ``SocketListener``, or an ``FdStream``
on a device), the stdlib's json and base64, and ``os.read`` for file reads.
It imports pydantic, as the start-up floor (``python -c "import trio,
pydantic"``) does, and uses none of it. No validation, no dispatch, no
limits, no logging: it is not an agent, it is the cost below which an agent
on this stack cannot go on this machine. It answers
``guest-sync-delimited`` (with the 0xFF byte), ``guest-ping``, and
``guest-file-open`` (read-only), ``guest-file-read`` and ``guest-file-close``;
anything else gets an error reply.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

import pydantic  # noqa: F401  (the stack's import cost, as the start-up floor pays it)
import trio

DELIMITER = b"\xff"


class Files:
    """Open files by handle, as guest-file-open gives them."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}

    def answer(self, request: dict[str, Any]) -> Any:
        """The return value of a file command."""
        name, arguments = request["execute"], request.get("arguments", {})
        if name == "guest-file-open":
            fd = os.open(arguments["path"], os.O_RDONLY)
            self.fds[fd] = fd
            return fd
        if name == "guest-file-read":
            data = os.read(self.fds[arguments["handle"]], arguments["count"])
            eof = not data
            return {"count": len(data), "buf-b64": base64.b64encode(data).decode(), "eof": eof}
        os.close(self.fds.pop(arguments["handle"]))
        return {}


def reply(line: bytes, files: Files) -> bytes:
    """The reply to one request line (without its newline)."""
    request = json.loads(line)
    name = request["execute"]
    if name == "guest-sync-delimited":
        return DELIMITER + json.dumps({"return": request["arguments"]["id"]}).encode() + b"\n"
    if name == "guest-ping":
        return b'{"return": {}}\n'
    if name.startswith("guest-file-"):
        return json.dumps({"return": files.answer(request)}).encode() + b"\n"
    error = {"class": "CommandNotFound", "desc": f"The command {name} has not been found"}
    return json.dumps({"error": error}).encode() + b"\n"


async def converse(stream: trio.abc.Stream) -> None:
    """Answer each line of ``stream`` until the peer closes it."""
    files = Files()
    pending = b""
    while data := await stream.receive_some():
        *lines, pending = (pending + data).split(b"\n")
        replies = [reply(line.lstrip(DELIMITER), files) for line in lines if line.strip()]
        if replies:
            await stream.send_all(b"".join(replies))
    for fd in files.fds:
        os.close(fd)


async def serve_unix(path: str) -> None:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await converse(stream)

    await trio.serve_listeners(handler, [trio.SocketListener(sock)])


async def serve_device(path: str) -> None:
    while True:
        async with trio.lowlevel.FdStream(os.open(path, os.O_RDWR | os.O_NONBLOCK)) as stream:
            await converse(stream)
        await trio.sleep(0.01)  # a port reads end-of-file while no host is connected


def main() -> None:
    method, _, path = sys.argv[1].partition(":")
    serve = {"unix-listen": serve_unix, "virtio-serial": serve_device}[method]
    trio.run(serve, path)


if __name__ == "__main__":
    main()
