"""Stand-ins for the system seams (``agent/system/executor.py``): nothing here touches the host.

``RecordingExecutor`` records every command a handler would run and answers
with scripted results; ``FakeClock`` records the times it is set to;
``scratch_root`` builds a system root with its own ``/etc/passwd`` and homes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.system.executor import CommandResult, SystemRoot


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    stdin: bytes | None
    env: Mapping[str, str] | None


Responder = Callable[[tuple[str, ...]], CommandResult | None]


@dataclass
class RecordingExecutor:
    """Records commands instead of running them.

    ``results`` maps a command (or its first words) to what it returns; a
    command that matches nothing fails with ENOENT, like a program that is not
    installed, unless ``default`` is set.
    """

    results: dict[tuple[str, ...], CommandResult] = field(default_factory=dict)
    default: CommandResult | None = None
    runs: list[Run] = field(default_factory=list)

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        command = tuple(argv)
        self.runs.append(Run(command, stdin, env))
        for length in range(len(command), 0, -1):
            result = self.results.get(command[:length])
            if result is not None:
                return result
        if self.default is not None:
            return self.default
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command[0])

    @property
    def commands(self) -> list[tuple[str, ...]]:
        return [run.argv for run in self.runs]


OK = CommandResult(0, b"", b"")


def exited(code: int, stderr: bytes = b"") -> CommandResult:
    return CommandResult(code, b"", stderr)


@dataclass
class FakeClock:
    settings: list[int] = field(default_factory=list)
    error: OSError | None = None

    def set_time_ns(self, ns: int) -> None:
        if self.error is not None:
            raise self.error
        self.settings.append(ns)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str  # as /etc/passwd says it, absolute inside the root


def scratch_root(base: Path, users: Sequence[User] = ()) -> SystemRoot:
    """A system root in ``base`` with an /etc/passwd listing ``users`` (homes not created)."""
    etc = base / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    lines = ["root:x:0:0:root:/root:/bin/bash"]
    lines += [f"{u.name}:x:{u.uid}:{u.gid}:{u.name}:{u.home}:/bin/sh" for u in users]
    (etc / "passwd").write_text("\n".join(lines) + "\n")
    return SystemRoot(base)
