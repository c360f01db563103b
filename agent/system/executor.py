"""How handlers reach the system they inspect or change.

Three seams, so that tests observe instead of doing: an :class:`Executor` runs
commands (shutdown, hwclock, chpasswd, ...), a :class:`SystemRoot` maps
the absolute paths handlers read and write (``/etc/passwd``, ``/sys/...``)
into a directory, and a :class:`Clock` sets the system time. The agent uses
the real ones; tests inject a recording executor, a scratch root and a fake
clock, and the real effects are tested inside a VM.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes


class Executor(Protocol):
    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` to completion; never raises for a non-zero exit."""
        ...


class ProcessExecutor:
    """Runs commands for real, as child processes."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        completed = await trio.run_process(
            list(argv),
            stdin=b"" if stdin is None else stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
        return CommandResult(completed.returncode, completed.stdout, completed.stderr)


@dataclass(frozen=True)
class SystemRoot:
    """Where the system's files are: ``/`` for real, a scratch directory in tests."""

    root: Path = Path("/")

    def path(self, absolute: str | Path) -> Path:
        """``absolute`` (e.g. ``/etc/passwd``) under this root."""
        return self.root / str(absolute).lstrip("/")


class Clock(Protocol):
    def set_time_ns(self, ns: int) -> None:
        """Set the system clock (CLOCK_REALTIME) to ``ns`` nanoseconds since the epoch."""
        ...


class SystemClock:
    """The real clock: settimeofday(), as qemu-ga does, with nanoseconds."""

    def set_time_ns(self, ns: int) -> None:
        time.clock_settime_ns(time.CLOCK_REALTIME, ns)


def describe_failure(argv: Sequence[str], result: CommandResult) -> str:
    """A failed command, worded for an error reply: what ran, how it ended, what it said."""
    said = (result.stderr or result.stdout).decode(errors="replace").strip()
    ending = (
        f"killed by signal {-result.returncode}"
        if result.returncode < 0
        else f"exit status {result.returncode}"
    )
    return f"{shlex.join(argv)} failed ({ending})" + (f": {said}" if said else "")
