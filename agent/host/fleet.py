"""One client command over many guests at once: the fleet logic, free of any transport.

:func:`run_all` runs an operation for every target in one nursery, at most ``limit`` at a
time, each under its own time limit, and gives one :class:`TargetResult` per target in the
order given. :func:`freeze_all` is fsfreeze across guests: freeze every one, run an
optional command while they are all frozen, then thaw; if a freeze fails or the deadline
passes, every guest that froze is thawed all the same, before anything else.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from agent.host.errors import AgentError, ClientError

THAW_TIMEOUT = 30.0  # seconds a thaw may take, whatever is left of the deadline


@dataclass
class TargetResult:
    """What one command did on one guest."""

    target: str
    ok: bool
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.target,
            "ok": self.ok,
            "result": self.value,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            **self.detail,
        }


async def run_all(
    targets: Sequence[str],
    operation: Callable[[str], Awaitable[Any]],
    *,
    limit: int,
    each: float,
) -> list[TargetResult]:
    """``operation(target)`` for every target, at most ``limit`` at once, ``each``
    seconds for each one; errors and timeouts become failed results, never exceptions."""
    results: dict[str, TargetResult] = {}
    limiter = trio.CapacityLimiter(max(1, limit))

    async def one(target: str) -> None:
        async with limiter:
            started = trio.current_time()
            try:
                with trio.fail_after(each):
                    value = await operation(target)
            except trio.TooSlowError:
                result = TargetResult(target, False, error=f"no result within {each:g} s")
            except (ClientError, OSError, ValueError) as err:
                result = TargetResult(target, False, error=describe(err))
            else:
                result = TargetResult(target, True, value)
            result.seconds = trio.current_time() - started
            results[target] = result

    async with trio.open_nursery() as nursery:
        for target in targets:
            nursery.start_soon(one, target)
    return [results[target] for target in targets]


def describe(err: BaseException) -> str:
    if isinstance(err, AgentError):
        return f"{err.error_class}: {err.desc}"
    return str(err)


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


async def freeze_all(
    targets: Sequence[str],
    connect: Connect,
    *,
    mountpoints: list[str] | None = None,
    command: Callable[[], Awaitable[int]] | None = None,
    limit: int,
    each: float,
    deadline: float = math.inf,
) -> FreezeOutcome:
    """Freeze every target, run ``command`` (it returns an exit status) once all are
    frozen, then thaw.

    ``deadline`` (seconds from now) bounds the freezes and the command together. Every
    guest whose freeze may have taken effect is thawed, whatever happened (a failure
    elsewhere, the deadline, cancellation): each thaw has ``each`` seconds (at least
    :data:`THAW_TIMEOUT`) and is shielded from cancellation. A guest whose agent answered
    the freeze with an error is not thawed: the agent thawed what it had frozen.
    """
    results = {target: TargetResult(target, False) for target in targets}
    to_thaw: dict[str, Freezable] = {}
    limiter = trio.CapacityLimiter(max(1, limit))
    outcome = FreezeOutcome(list(results.values()), all_frozen=False)

    async def freeze_one(stack: AsyncExitStack, target: str) -> None:
        result = results[target]
        started = trio.current_time()
        async with limiter:
            try:
                with trio.fail_after(each):
                    client = await stack.enter_async_context(connect(target))
                    to_thaw[target] = client
                    result.detail["frozen"] = await client.fsfreeze_freeze(mountpoints)
            except trio.TooSlowError:
                result.error = f"freeze: no reply within {each:g} s"
            except AgentError as err:
                del to_thaw[target]
                result.error = f"freeze: {describe(err)}"
            except (ClientError, OSError) as err:
                result.error = f"freeze: {err}"
            finally:
                result.seconds = trio.current_time() - started

    async def thaw_one(target: str, client: Freezable) -> None:
        result = results[target]
        with trio.move_on_after(max(each, THAW_TIMEOUT)):
            try:
                result.detail["thawed"] = await client.fsfreeze_thaw()
            except (ClientError, OSError) as err:
                result.error = result.error or f"thaw: {describe(err)}"
            else:
                result.ok = result.error is None
            return
        result.error = result.error or "thaw: no reply"

    async with AsyncExitStack() as stack:
        try:
            with trio.move_on_after(deadline) as window:
                async with trio.open_nursery() as nursery:
                    for target in targets:
                        nursery.start_soon(freeze_one, stack, target)
                outcome.all_frozen = all("frozen" in r.detail for r in results.values())
                if outcome.all_frozen and command is not None:
                    outcome.command_status = await command()
            if window.cancelled_caught:
                outcome.command_error = "the deadline passed" if outcome.all_frozen else None
                for result in results.values():
                    if "frozen" not in result.detail and result.error is None:
                        result.error = "freeze: the deadline passed"
        finally:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as nursery:
                    for target, client in to_thaw.items():
                        nursery.start_soon(thaw_one, target, client)
    return outcome
