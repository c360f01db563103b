"""Background work: tasks that outlive the command that started them.

A guest-exec child runs long after its command has replied, and after the
host has disconnected; the tasks that feed and drain it cannot live in the
command's cancel scope or in the session's nursery. They go into the
agent's own nursery, which :class:`BackgroundTasks` holds while the agent is
running (``async with Agent(...)``, the only way an agent runs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from agent.errors import GenericError


class BackgroundTasks:
    """Starts tasks in the agent's nursery; handlers reach it as ``ctx.tasks``."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None

    @property
    def running(self) -> bool:
        return self._nursery is not None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Hold a nursery for background tasks; cancel what is left when the block ends.

        Whoever opens it stops the work first (kills the children the tasks wait
        for), so the cancellation only ends tasks that have nothing left to do.
        """
        if self._nursery is not None:
            raise RuntimeError("background tasks are already running")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    def start_soon(
        self, function: Callable[..., Awaitable[Any]], *args: object, name: str | None = None
    ) -> None:
        if self._nursery is None:
            raise GenericError("the agent is not running: background work cannot start")
        self._nursery.start_soon(function, *args, name=name)
