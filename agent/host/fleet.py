"""One client command over many guests at once: the fleet logic, free of any transport.

:func:`run_all` runs an operation for every target in one nursery, at most ``limit`` at a
time and at most ``per_host`` of one host (:class:`Slots`), each under its own time
limit, and gives one :class:`TargetResult` per target in the order given.
:func:`freeze_all` is fsfreeze across guests: freeze every one, run an optional command
while they are all frozen, then thaw; if a freeze fails or the deadline passes, every
guest that froze is thawed all the same, before anything else. Guests on a host that
hangs only hold their own slots: the others go on.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from agent.host.errors import AgentError, AgentTimeout, ClientError
from agent.host.execution import NotSupported

THAW_TIMEOUT = 30.0  # seconds a thaw may take, whatever is left of the deadline
THAW_RETRY = 1.0  # seconds between thaws that did not reach the agent (libvirt busy)


@dataclass(frozen=True)
class ErrorInfo:
    """Why a command failed on one guest: the agent's error class and text, or one of the
    client's own classes (:func:`error_info`)."""

    kind: str
    desc: str
    from_agent: bool = False  # an error reply, not a failure to get one

    def as_json(self) -> dict[str, str]:
        return {"class": self.kind, "desc": self.desc}

    def __str__(self) -> str:
        return f"{self.kind}: {self.desc}"


@dataclass
class TargetResult:
    """What one command did on one guest. ``value`` is JSON-able; a failed command may
    have one too (a program's output with its non-zero status, the steps of a freeze)."""

    target: str
    ok: bool
    value: Any = None
    error: ErrorInfo | None = None
    seconds: float = 0.0
    host: str | None = None  # the host's label, when there are labelled hosts

    def as_json(self) -> dict[str, Any]:
        """The result's JSON document (the format of docs/client.md)."""
        return {
            "target": self.target,
            "ok": self.ok,
            "return": self.value,
            "error": self.error.as_json() if self.error else None,
            "seconds": round(self.seconds, 3),
        }


class Unsuccessful(Exception):
    """An operation that ran to its end and failed, with a result to show all the same
    (a guest program's output and non-zero status)."""

    def __init__(self, error: ErrorInfo, value: Any) -> None:
        super().__init__(str(error))
        self.error = error
        self.value = value


def error_info(err: BaseException, step: str = "") -> ErrorInfo:
    """``err`` as the class and text a result shows; ``step`` prefixes the text."""
    prefix = f"{step}: " if step else ""
    if isinstance(err, AgentError):
        return ErrorInfo(err.error_class, prefix + err.desc, from_agent=True)
    if isinstance(err, AgentTimeout | trio.TooSlowError):
        kind = "Timeout"
    elif isinstance(err, ClientError):
        kind = "ClientError"
    elif isinstance(err, NotSupported):
        kind = "NotSupported"
    else:  # OSError, ValueError: a local file, bad input
        kind = "LocalError"
    return ErrorInfo(kind, prefix + str(err))


class Slots:
    """At most ``limit`` targets served at once, and at most ``per_host`` of each host
    (``hosts``: target -> host; a target missing from it is a host of its own). A
    target waits for its host's slot before it takes one of all: a host that hangs
    holds only its own."""

    def __init__(
        self, limit: int, hosts: Mapping[str, str] | None = None, per_host: int | None = None
    ) -> None:
        self._all = trio.CapacityLimiter(max(1, limit))
        self._hosts = hosts or {}
        self._per_host = max(1, per_host or limit)
        self._limiters: dict[str, trio.CapacityLimiter] = {}

    @asynccontextmanager
    async def slot(self, target: str) -> AsyncIterator[None]:
        host = self._hosts.get(target, target)
        limiter = self._limiters.setdefault(host, trio.CapacityLimiter(self._per_host))
        async with limiter, self._all:
            yield


async def run_all(
    targets: Sequence[str],
    operation: Callable[[str], Awaitable[Any]],
    *,
    limit: int,
    each: float,
    hosts: Mapping[str, str] | None = None,
    per_host: int | None = None,
) -> list[TargetResult]:
    """``operation(target)`` for every target, within :class:`Slots`, ``each`` seconds
    for each one; errors and timeouts become failed results, never exceptions."""
    results: dict[str, TargetResult] = {}
    slots = Slots(limit, hosts, per_host)

    async def one(target: str) -> None:
        async with slots.slot(target):
            started = trio.current_time()
            try:
                with trio.fail_after(each):
                    value = await operation(target)
            except trio.TooSlowError:
                result = TargetResult(
                    target, False, error=ErrorInfo("Timeout", f"no result within {each:g} s")
                )
            except Unsuccessful as failed:
                result = TargetResult(target, False, failed.value, failed.error)
            except (ClientError, OSError, ValueError, NotSupported) as err:
                result = TargetResult(target, False, error=error_info(err))
            else:
                result = TargetResult(target, True, value)
            result.seconds = trio.current_time() - started
            results[target] = result

    async with trio.open_nursery() as nursery:
        for target in targets:
            nursery.start_soon(one, target)
    return [results[target] for target in targets]


class Freezable(Protocol):
    """What :func:`freeze_all` needs of a client."""

    async def fsfreeze_freeze(self, mountpoints: list[str] | None = None) -> int: ...

    async def fsfreeze_thaw(self) -> int: ...


Connect = Callable[[str], AbstractAsyncContextManager[Freezable]]


@dataclass
class FreezeOutcome:
    """:func:`freeze_all`'s report: one result per guest, and what became of the command."""

    results: list[TargetResult]
    all_frozen: bool
    command_status: int | None = None  # None: it did not run (or there was none)
    command_error: str | None = None
    window: float | None = None  # seconds from the first freeze sent to the last thaw


async def freeze_all(
    targets: Sequence[str],
    connect: Connect,
    *,
    mountpoints: list[str] | None = None,
    command: Callable[[], Awaitable[int]] | None = None,
    limit: int,
    each: float,
    deadline: float = math.inf,
    hosts: Mapping[str, str] | None = None,
    per_host: int | None = None,
) -> FreezeOutcome:
    """Freeze every target (within :class:`Slots`), run ``command`` (it returns an exit
    status) once all are frozen, then thaw.

    ``deadline`` (seconds from now) bounds the freezes and the command together. Every
    guest whose freeze may have taken effect is thawed, whatever happened (a failure
    elsewhere, the deadline, cancellation): the thaws go at once, each shielded from
    cancellation with ``each`` seconds (at least :data:`THAW_TIMEOUT`), tried again
    while they do not reach the agent (libvirt lets a new command through only once the
    freeze it was waiting for has ended). A guest whose agent answered the freeze with
    an error is not thawed: the agent thawed what it had frozen.

    A guest's ``window`` (in its value) is the time from its freeze sent to its thaw
    answered: its filesystems were frozen within it. The outcome's ``window`` runs from
    the first freeze sent to the last thaw answered, over the guests thawed.
    """
    results = {target: TargetResult(target, False) for target in targets}
    steps: dict[str, dict[str, int]] = {target: {} for target in targets}  # frozen, thawed
    started: dict[str, float] = {}
    sent: dict[str, float] = {}  # the freeze request's start
    ended: dict[str, float] = {}  # the freeze's end, then the thaw's
    to_thaw: dict[str, Freezable] = {}
    slots = Slots(limit, hosts, per_host)
    outcome = FreezeOutcome(list(results.values()), all_frozen=False)

    async def freeze_one(stack: AsyncExitStack, target: str) -> None:
        result = results[target]
        async with slots.slot(target):
            started[target] = trio.current_time()
            try:
                with trio.fail_after(each):
                    client = await stack.enter_async_context(connect(target))
                    sent[target] = trio.current_time()
                    to_thaw[target] = client
                    steps[target]["frozen"] = await client.fsfreeze_freeze(mountpoints)
            except trio.TooSlowError:
                result.error = ErrorInfo("Timeout", f"freeze: no reply within {each:g} s")
            except AgentError as err:
                del to_thaw[target]
                result.error = error_info(err, "freeze")
            except (ClientError, OSError) as err:
                result.error = error_info(err, "freeze")
            finally:
                ended[target] = trio.current_time()

    async def thaw_one(target: str, client: Freezable) -> None:
        result = results[target]
        limit = max(each, THAW_TIMEOUT)
        last = ""  # why the last try did not reach the agent
        with trio.move_on_after(limit) as waited:
            while True:
                try:
                    steps[target]["thawed"] = await client.fsfreeze_thaw()
                except AgentError as err:
                    result.error = result.error or error_info(err, "thaw")
                except (ClientError, OSError) as err:
                    last = f" (last: {err})"
                    await trio.sleep(THAW_RETRY)
                    continue
                break
        if waited.cancelled_caught:
            error = ErrorInfo("Timeout", f"thaw: no reply within {limit:g} s{last}")
            result.error = result.error or error
        ended[target] = trio.current_time()

    async with AsyncExitStack() as stack:
        try:
            with trio.move_on_after(deadline) as window:
                async with trio.open_nursery() as nursery:
                    for target in targets:
                        nursery.start_soon(freeze_one, stack, target)
                outcome.all_frozen = all("frozen" in done for done in steps.values())
                if outcome.all_frozen and command is not None:
                    outcome.command_status = await command()
            if window.cancelled_caught:
                outcome.command_error = "the deadline passed" if outcome.all_frozen else None
                for target, result in results.items():
                    if "frozen" not in steps[target] and result.error is None:
                        result.error = ErrorInfo("Timeout", "freeze: the deadline passed")
        finally:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as nursery:
                    for target, client in to_thaw.items():
                        nursery.start_soon(thaw_one, target, client)
            thawed = [target for target in to_thaw if "thawed" in steps[target]]
            if thawed:
                first = min(sent[target] for target in thawed)
                outcome.window = max(ended[target] for target in thawed) - first
            for target, result in results.items():
                value: dict[str, Any] = dict(steps[target])
                if target in thawed:
                    value["window"] = round(ended[target] - sent[target], 3)
                result.value = value or None
                result.ok = result.error is None and "thawed" in steps[target]
                if target in started:
                    result.seconds = ended[target] - started[target]
    return outcome
