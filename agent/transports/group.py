"""Several transports in one agent: each its own task, each failing alone.

One guest image may be served over virtio-serial by QEMU and over vsock by
another VMM, and tools inside the guest may want a local socket beside the
host's port: the agent serves every channel it is given at once. Each is a
task of :func:`serve_transport`, handing conversations to the same handler,
one client at a time per channel; the agent's state behind the handler is
shared (see docs/transports.md for what that asks of it).

A channel that cannot open, or fails, ends alone (``retry`` reopens it every
5 s instead) while the others serve; :func:`serve_all` returns (raising the
last failure) only once the last one has ended for good. The log records of
a session carry its channel's name (:data:`SESSION_TRANSPORT`) when there are
several.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from contextvars import ContextVar
from typing import NamedTuple

import trio

from agent.transports.serve import (
    StartedOnce,
    TransportError,
    check_transports,
    describe,
    serve_transport,
)
from agent.transports.spec import TransportSpec
from agent.transports.types import StreamHandler

log = logging.getLogger(__name__)

# The channel of the session a task serves (its name, as :func:`describe` gives
# it); None outside sessions, and when the agent serves one channel only.
SESSION_TRANSPORT: ContextVar[str | None] = ContextVar("SESSION_TRANSPORT", default=None)


class Channel(NamedTuple):
    """One transport to serve: ``spec`` opened, or ``listener``, a listening
    socket the caller opened (systemd's), served as ``spec``'s method."""

    spec: TransportSpec
    listener: socket.socket | None = None

    @property
    def name(self) -> str:
        return describe(self.spec, self.listener)


class _Running:
    """The channels serving, and the failures of those that ended."""

    def __init__(self) -> None:
        self.count = 0
        self.failures: list[TransportError] = []


async def serve_all(
    channels: Sequence[Channel],
    handler: StreamHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every channel in a task of its own until cancelled, or until the
    last has ended for good; then raise why it ended (:class:`TransportError`).

    Started once every channel that can open now is open; one that cannot is
    logged and left out (with ``retry`` its task waits for it instead). When
    none can open, the error is raised at once: each channel's, in an
    exception group when there are several.
    """
    check_transports([channel.spec for channel in channels if channel.listener is None])
    tagged = len(channels) > 1
    running = _Running()
    failed_at_start: list[TransportError] = []
    async with trio.open_nursery() as nursery:
        for channel in channels:
            try:
                await nursery.start(_serve_channel, channel, handler, running, tagged)
            except TransportError as err:
                failed_at_start.append(err)
        if running.count:
            for failure in failed_at_start:
                log.error("%s; serving the other transports", failure)
            task_status.started()
    if not running.count and not running.failures:  # none could open
        if len(failed_at_start) == 1:
            raise failed_at_start[0]
        raise ExceptionGroup("no transport could open", failed_at_start)
    raise running.failures[-1]  # the last one ended, and with it the agent


async def _serve_channel(
    channel: Channel,
    handler: StreamHandler,
    running: _Running,
    tagged: bool,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``channel``; its failure ends this task only, and is kept for the
    caller when it was the last one serving."""
    if tagged:
        SESSION_TRANSPORT.set(channel.name)  # this task's context: its sessions

    def count() -> None:
        running.count += 1

    status = StartedOnce(task_status, on_started=count)
    try:
        await serve_transport(channel.spec, handler, listener=channel.listener, task_status=status)
    except TransportError as err:
        if not status.reported:
            raise  # to the caller's start: it could not open
        running.count -= 1
        running.failures.append(err)
        if running.count:
            log.error("%s; %d other transport(s) still serving", err, running.count)
