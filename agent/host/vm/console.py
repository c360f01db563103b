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
    """``log``: where the console is kept (None: :meth:`open`'s default); ``on_step``
    gets each step as it comes, ``echo`` everything as it comes."""

    def __init__(
        self,
        log: Path | None = None,
        on_step: Callable[[Step], object] | None = None,
        echo: BinaryIO | None = None,
    ) -> None:
        self.path = log
        self.steps: dict[str, Step] = {}
        self._on_step = on_step
        self._echo = echo
        self._file: BinaryIO | None = None
        self._tail: deque[bytes] = deque(maxlen=TAIL_LINES)
        self._partial = b""

    def open(self, default: Path) -> Console:
        """Start the log (at ``default`` unless told otherwise); :meth:`close` ends it."""
        self.path = self.path or default
        self._file = open(self.path, "wb")  # noqa: SIM115 (see close)
        return self

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        """Copy the console until QEMU closes it."""
        assert self._file is not None, "open() first"
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

    def close(self) -> None:
        if self._file is not None:
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
        assert self.path is not None, "open() first"
        return self.path.read_bytes().decode(errors="replace")
