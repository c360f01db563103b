"""Transports: each opens its channel and hands every connection to the agent
as a ``trio.abc.Stream``; the session never knows which kind it got."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from agent.config import AgentConfig
from agent.transports.unix import serve_unix_listen

StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]

METHODS = ("unix-listen",)


class TransportError(Exception):
    """The transport cannot be opened; the message says why."""


async def serve_transport(
    config: AgentConfig,
    handler: StreamHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open ``config``'s transport and serve its connections until cancelled."""
    if config.method == "unix-listen":
        try:
            await serve_unix_listen(
                config.resolved_path, config.socket_mode, handler, task_status=task_status
            )
        except OSError as err:
            raise TransportError(f"unix-listen {config.resolved_path}: {err}") from err
        return
    raise TransportError(
        f"transport method '{config.method}' is not available (have: {', '.join(METHODS)})"
    )
