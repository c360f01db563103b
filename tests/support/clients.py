"""Small QGA clients for the tests: one over a trio stream, one over a unix socket
(agents started as processes: ``processes.py``)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import trio

Reply = dict[str, Any]


def strict_json(line: bytes) -> Any:
    """``line`` parsed as a strict host would: UTF-8 only, no lone surrogate."""
    value = json.loads(line.decode("utf-8", "strict"))
    json.dumps(value, ensure_ascii=False).encode("utf-8", "strict")  # raises on a lone one
    return value


class StreamClient:
    """Talks to an agent over a ``trio.abc.Stream`` (an in-memory pair in tests)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes:
        """The next reply line, without its newline (a 0xFF sentinel is kept)."""
        with trio.fail_after(10):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some()
                if not data:
                    raise EOFError("agent closed the stream")
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    async def reply(self) -> Reply:
        result: Reply = json.loads(await self.line())
        return result

    async def execute(
        self, name: str, arguments: dict[str, Any] | None = None, **extra: Any
    ) -> Reply:
        request: dict[str, Any] = {"execute": name, **extra}
        if arguments is not None:
            request["arguments"] = arguments
        await self.send(json.dumps(request).encode())
        return await self.reply()

    async def expect_silence(self, seconds: float = 0.2) -> None:
        """Assert that no reply comes (with the autojump clock this costs nothing)."""
        with trio.move_on_after(seconds):
            data = await self.stream.receive_some()
            raise AssertionError(f"unexpected reply {data!r}")


class SocketClient:
    """A blocking QGA client over a unix socket, for agents run as processes."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.settimeout(timeout)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, timeout: float | None = None) -> bytes:
        if timeout is not None:
            self.sock.settimeout(timeout)
        if b"\n" not in self.buffer:
            pieces = [self.buffer]  # joined once: a 64 MiB reply is not copied over and over
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise EOFError("agent closed the connection")
                pieces.append(data)
                if b"\n" in data:
                    break
            self.buffer = b"".join(pieces)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def reply(self) -> Reply:
        result: Reply = json.loads(self.line())
        return result

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Reply:
        request: dict[str, Any] = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        self.send(json.dumps(request).encode() + b"\n")
        return self.reply()

    def resync(self, sync_id: int) -> None:
        """0xFF then guest-sync-delimited; drop everything up to its reply."""
        self.send(
            b"\xff"
            + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode()
            + b"\n"
        )
        while True:
            line = self.line()
            if line.startswith(b"\xff") and json.loads(line[1:]) == {"return": sync_id}:
                return

    def replies_until_sync(self, sync_id: int) -> list[bytes]:
        """Send a guest-sync; return the raw reply lines that came before its reply."""
        self.send(json.dumps({"execute": "guest-sync", "arguments": {"id": sync_id}}).encode())
        lines: list[bytes] = []
        while True:
            line = self.line()
            if json.loads(line.lstrip(b"\xff")) == {"return": sync_id}:
                return lines
            lines.append(line)
