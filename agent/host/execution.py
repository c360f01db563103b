"""Run a guest program from the host as over ssh: live output, stdin, exit status.

    execution = await client.run(["make", "check"])
    async for chunk in execution:          # Chunk("stdout" | "stderr", bytes)
        log.write(chunk.data)
    result = await execution               # RunResult: exitcode / signal

Against trio-qga this uses the streaming exec extension (its
``__io.github.trio-qga_exec-*`` commands): the output comes while the program
runs, stdin can be written piece by piece, signals and terminal sizes are
forwarded. Against an agent without it (qemu-ga) it falls back to guest-exec
and guest-exec-status polling: the output comes when the program has ended,
and stdin can only be given up front. An agent whose command filter disables
exec is told apart from an older one: :class:`ExecDisabled`, no fallback.
Everything goes through :meth:`QgaClient.execute`, so it works over any
transport the client has.
"""

from __future__ import annotations

import abc
import shlex
from collections import deque
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import pybase64
import trio

from agent.host.errors import CommandNotFound

PREFIX = "__io.github.trio-qga_"
START = PREFIX + "exec-start"
READ_WAIT = 5.0  # long poll, seconds, when nothing else needs the connection
BUSY_WAIT = 0.1  # long poll while stdin may bring data: it waits behind the read
FALLBACK_POLL = 0.05  # first guest-exec-status interval, doubling up to 1 s


@dataclass(frozen=True)
class Chunk:
    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class RunResult:
    exitcode: int | None
    signal: int | None
    stdout: bytes = b""  # what iteration did not take
    stderr: bytes = b""

    @property
    def shell_status(self) -> int:
        """The status a shell (or ssh) would give: the exit code, or 128 + signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exitcode or 0


class Requester(Protocol):
    """What an execution needs of the client that started it."""

    timeout: float  # seconds the client waits for any reply

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

    async def commands(self) -> dict[str, bool]: ...


class NotSupported(Exception):
    """The agent cannot do this without the streaming extension (qemu-ga)."""


class ExecDisabled(CommandNotFound):
    """The agent has exec, but its command filter (or a freeze) disables it."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(command, "CommandNotFound", f"exec is disabled on this agent ({reason})")


def streams(commands: Mapping[str, bool]) -> bool:
    """Whether an agent whose guest-info lists ``commands`` (name: enabled) runs
    programs through the streaming exec extension (True) or guest-exec (False).

    Raises :class:`ExecDisabled` when it lists guest-exec but disabled: the
    streaming exec, gated by guest-exec, is then disabled too on trio-qga, and
    absent on qemu-ga. The streaming exec disabled alone (blocked by name) leaves
    guest-exec.
    """
    if commands.get(START):
        return True
    if commands.get("guest-exec") is False:
        raise ExecDisabled("guest-exec", "guest-info shows guest-exec disabled")
    return False


async def start(
    client: Requester,
    argv: Sequence[str],
    *,
    env: Sequence[str] = (),
    cwd: str | None = None,
    stdin: bytes | None = None,
    terminal: tuple[int, int] | None = None,
) -> Execution:
    """Start ``argv`` in the guest. ``env``: ``NAME=VALUE`` added to the guest's
    environment; ``stdin``: all of the program's input (written, then its stdin is
    closed; without it, stdin stays open for :meth:`Execution.write`, or is
    /dev/null with the fallback); ``terminal``: run on a pseudo-terminal of
    (rows, cols)."""
    execution = await start_streaming(client, argv, env=env, cwd=cwd, terminal=terminal)
    if execution is None:
        if terminal is not None:
            raise NotSupported("a terminal needs the streaming exec extension of trio-qga")
        return await start_polled(client, argv, env=env, cwd=cwd, stdin=stdin)
    if stdin is not None:
        await execution.write(stdin)
        await execution.close_stdin()
    return execution


async def start_streaming(
    client: Requester,
    argv: Sequence[str],
    *,
    env: Sequence[str] = (),
    cwd: str | None = None,
    terminal: tuple[int, int] | None = None,
) -> StreamingExecution | None:
    """``argv`` started through the streaming exec, its stdin open; None when
    the agent runs programs through guest-exec only (:func:`start_polled`).

    The streaming start is asked for straight away, and guest-info only when it
    fails: listing every command makes trio-qga find and import its plugins,
    0.28 s of a TCG test VM's first ``run`` (docs/vm.md, "Where a boot's time
    goes"), and a ``run`` on qemu-ga costs one round trip more than before.
    Raises :class:`ExecDisabled` when guest-info shows exec disabled (the
    filter, a freeze), as :func:`streams` decides.
    """
    if not argv:
        raise ValueError("no program to run")
    arguments: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:])}
    if env:
        arguments["env"] = list(env)
    if cwd is not None:
        arguments["cwd"] = cwd
    if terminal is not None:
        arguments["terminal"] = {"rows": terminal[0], "cols": terminal[1]}
    try:
        started = await client.execute(START, arguments)
    except CommandNotFound as err:  # absent (qemu-ga), or disabled: guest-info says which
        if streams(await client.commands()):  # disabled a moment ago (a freeze)
            raise ExecDisabled(START, err.desc) from err
        return None
    return StreamingExecution(client, started["pid"])


async def start_polled(
    client: Requester,
    argv: Sequence[str],
    *,
    env: Sequence[str] = (),
    cwd: str | None = None,
    stdin: bytes | None = None,
) -> Execution:
    """``argv`` started through guest-exec, whose output is polled for with
    guest-exec-status: what an agent without the streaming exec offers."""
    if not argv:
        raise ValueError("no program to run")
    return await PolledExecution.start(client, _wrapped(argv, env, cwd), stdin)


async def _starting(client: Requester, command: str, arguments: dict[str, Any]) -> Any:
    """``command``'s reply; disabled since guest-info was read (a freeze): ExecDisabled."""
    try:
        return await client.execute(command, arguments)
    except CommandNotFound as err:
        if "has been disabled" in err.desc:
            raise ExecDisabled(command, err.desc) from err
        raise


def _wrapped(argv: Sequence[str], env: Sequence[str], cwd: str | None) -> list[str]:
    """guest-exec has no cwd and replaces the whole environment: add them with sh and env."""
    if not env and cwd is None:
        return list(argv)
    script = f'cd {shlex.quote(cwd or ".")} && exec env "$@"'
    return ["/bin/sh", "-c", script, "sh", *env, *argv]


class Execution(abc.ABC):
    """A guest program started by :func:`start`. Iterate it for its output (once);
    await it for its :class:`RunResult`."""

    streaming = True

    def __init__(self, client: Requester, pid: int) -> None:
        self.client = client
        self.pid = pid
        self._result: RunResult | None = None
        self._chunks: deque[Chunk] = deque()

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        while not self._chunks:
            if self._result is not None:
                raise StopAsyncIteration
            self._chunks.extend(await self._poll())
        return self._chunks.popleft()

    @abc.abstractmethod
    async def _poll(self) -> list[Chunk]:
        """One exchange: the output that came; sets ``_result`` at the end."""

    async def wait(self) -> RunResult:
        """Wait for the end; output not taken by iteration is in the result."""
        while self._result is None:
            self._chunks.extend(await self._poll())
        stdout, stderr = (
            b"".join(chunk.data for chunk in self._chunks if chunk.stream == name)
            for name in ("stdout", "stderr")
        )
        self._chunks.clear()
        return RunResult(self._result.exitcode, self._result.signal, stdout, stderr)

    def __await__(self) -> Generator[Any, None, RunResult]:
        return self.wait().__await__()

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Write all of ``data`` to the program's stdin."""

    @abc.abstractmethod
    async def close_stdin(self) -> None:
        """Close the program's stdin (on a terminal: type end-of-file)."""

    @abc.abstractmethod
    async def send_signal(self, number: int) -> None:
        """Send signal ``number`` to the program's process group."""

    @abc.abstractmethod
    async def resize(self, rows: int, cols: int) -> None:
        """Set the size of the program's terminal."""


class StreamingExecution(Execution):
    """Through the streaming exec extension."""

    def __init__(self, client: Requester, pid: int) -> None:
        super().__init__(client, pid)
        self.offsets = {"out": 0, "err": 0}
        self.wait_seconds = READ_WAIT

    async def _poll(self) -> list[Chunk]:
        reply = await self.client.execute(
            PREFIX + "exec-read",
            {
                "pid": self.pid,
                "out-offset": self.offsets["out"],
                "err-offset": self.offsets["err"],
                "wait": min(self.wait_seconds, self.client.timeout / 2),
            },
        )
        chunks = []
        for key, stream in (("out", "stdout"), ("err", "stderr")):
            data = pybase64.b64decode(reply[f"{key}-data"], validate=True)
            self.offsets[key] += len(data)
            if data:
                chunks.append(Chunk(stream, data))  # type: ignore[arg-type]
        if reply["exited"]:
            self._result = RunResult(reply.get("exitcode"), reply.get("signal"))
        return chunks

    async def write(self, data: bytes) -> None:
        """In pieces if the program is slow to take it."""
        view = memoryview(data)
        while view:
            encoded = pybase64.b64encode(view[: 1 << 20]).decode("ascii")
            reply = await self.client.execute(
                PREFIX + "exec-write", {"pid": self.pid, "data": encoded}
            )
            view = view[reply["count"] :]

    async def close_stdin(self) -> None:
        await self.client.execute(PREFIX + "exec-close-stdin", {"pid": self.pid})

    async def send_signal(self, number: int) -> None:
        await self.client.execute(PREFIX + "exec-signal", {"pid": self.pid, "signal": number})

    async def resize(self, rows: int, cols: int) -> None:
        await self.client.execute(
            PREFIX + "exec-resize", {"pid": self.pid, "rows": rows, "cols": cols}
        )


class PolledExecution(Execution):
    """Through guest-exec and guest-exec-status: the output comes at the end."""

    streaming = False

    def __init__(self, client: Requester, pid: int) -> None:
        super().__init__(client, pid)
        self._delay = FALLBACK_POLL

    @classmethod
    async def start(
        cls, client: Requester, argv: list[str], stdin: bytes | None
    ) -> PolledExecution:
        arguments: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin is not None:
            arguments["input-data"] = pybase64.b64encode(stdin).decode("ascii")
        return cls(client, (await _starting(client, "guest-exec", arguments))["pid"])

    async def _poll(self) -> list[Chunk]:
        status = await self.client.execute("guest-exec-status", {"pid": self.pid})
        if not status["exited"]:
            await trio.sleep(self._delay)
            self._delay = min(self._delay * 2, 1.0)
            return []
        self._result = RunResult(status.get("exitcode"), status.get("signal"))
        chunks = []
        for key, stream in (("out", "stdout"), ("err", "stderr")):
            data = pybase64.b64decode(status.get(f"{key}-data", ""))
            if data:
                chunks.append(Chunk(stream, data))  # type: ignore[arg-type]
        return chunks

    async def write(self, data: bytes) -> None:
        raise NotSupported("stdin after the start needs the streaming exec extension")

    async def close_stdin(self) -> None:
        """Nothing to do: the input was all given at the start."""

    async def send_signal(self, number: int) -> None:
        raise NotSupported("signals need the streaming exec extension of trio-qga")

    async def resize(self, rows: int, cols: int) -> None:
        raise NotSupported("a terminal needs the streaming exec extension of trio-qga")
