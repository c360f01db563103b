"""The guest's serial console: kept in a file, its last lines at hand, and the
progress lines of the guest init ("trio-qga-vm: STEP UPTIME") timed as they come."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

STEP = re.compile(rb"trio-qga-vm: (\w+) ([\d.]+)\r?$")
TAIL_LINES = 40


@dataclass(frozen=True)
class Step:
    """A step of the guest's boot: its name, the guest's uptime then (seconds since
    the kernel started) and when the line came (``trio.current_time()``)."""

    name: str
    uptime: float
    arrived: float


class Console:
    def __init__(
        self,
        log: Path,
        on_step: Callable[[Step], object] | None = None,
        echo: BinaryIO | None = None,
    ) -> None:
        self.path = log
        self._echo = echo
        self.steps: dict[str, Step] = {}
        self._file = open(log, "wb")  # noqa: SIM115 (closed by pump)
        self._tail: deque[bytes] = deque(maxlen=TAIL_LINES)
        self._partial = b""
        self._on_step = on_step

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        """Copy the console until QEMU closes it."""
        try:
            while data := await stream.receive_some(65536):
                self._file.write(data)
                self._file.flush()
                if self._echo is not None:
                    self._echo.write(data)
                    self._echo.flush()
                lines = (self._partial + data).split(b"\n")
                self._partial = lines.pop()
                for line in lines:
                    self._line(line)
        finally:
            self._file.close()

    def _line(self, line: bytes) -> None:
        self._tail.append(line)
        match = STEP.search(line)
        if match is None:
            return
        step = Step(match[1].decode(), float(match[2]), trio.current_time())
        self.steps.setdefault(step.name, step)
        if self._on_step is not None:
            self._on_step(step)

    def tail(self) -> str:
        """The last lines, for error messages."""
        lines = [*self._tail, self._partial] if self._partial else list(self._tail)
        return b"\n".join(lines).decode(errors="replace")

    def text(self) -> str:
        return self.path.read_bytes().decode(errors="replace")
