"""Serve one channel: open it, hand each conversation to the agent, reopen on failure.

unix-listen and vsock-listen accept clients one at a time; virtio-serial and
isa-serial keep their device open and serve one conversation after another
on it. With ``retry_path`` (qemu-ga's ``-r``) a channel that cannot be opened,
or fails, is opened again every 5 s instead of stopping the agent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence

import trio

from agent.transports.spec import METHODS, TransportSpec
from agent.transports.types import StreamHandler

log = logging.getLogger(__name__)

RETRY_INTERVAL = 5.0  # seconds, qemu-ga's


class TransportError(Exception):
    """The transport cannot be opened or failed; the message says why."""


def check_transports(specs: Sequence[TransportSpec]) -> None:
    """Refuse what can never work: a channel of :func:`check_transport`, or one named
    twice (the same device, socket path or vsock port: it cannot be opened twice)."""
    seen: dict[object, TransportSpec] = {}
    for spec in specs:
        check_transport(spec)
        key = _identity(spec)
        if key in seen:
            raise TransportError(
                f"transport {describe(spec)} is named twice"
                + (f" (as {describe(seen[key])})" if seen[key] != spec else "")
            )
        seen[key] = spec


def _identity(spec: TransportSpec) -> object:
    """What two channels cannot share: a vsock port (whatever the CID), a path."""
    if spec.method == "vsock-listen":
        from agent.transports.vsock import parse_address

        return ("vsock", parse_address(spec.resolved_path)[1])
    return os.path.normpath(os.path.abspath(spec.resolved_path))


def check_transport(spec: TransportSpec) -> None:
    """Refuse a method, path or address that can never work (before any retry)."""
    if spec.method not in METHODS:
        raise TransportError(
            f"transport method '{spec.method}' is not available (have: {', '.join(METHODS)})"
        )
    try:
        path = spec.resolved_path
        if spec.method == "vsock-listen":
            from agent.transports.vsock import parse_address

            parse_address(path)
    except ValueError as err:
        raise TransportError(str(err)) from err


async def serve_transport(
    spec: TransportSpec,
    handler: StreamHandler,
    *,
    listener: socket.socket | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open ``spec``'s transport (or serve ``listener``, a socket systemd passed)
    and serve its conversations until cancelled.

    Started once the channel is open; with ``retry_path``, also when the first
    attempt failed: the agent is up, waiting for its channel.
    """
    if listener is None:
        check_transport(spec)
    status = StartedOnce(task_status)
    while True:
        try:
            await _serve_once(spec, handler, listener, status)
        except OSError as err:
            failure = TransportError(f"{describe(spec, listener)}: {err.strerror or err}")
            if not spec.retry:
                raise failure from err
            log.warning("%s; trying again in %g s", failure, RETRY_INTERVAL)
            status.started()
        await trio.sleep(RETRY_INTERVAL)


async def _serve_once(
    spec: TransportSpec,
    handler: StreamHandler,
    listener: socket.socket | None,
    task_status: trio.TaskStatus[None],
) -> None:
    """One attempt at serving the channel. Each kind's module is imported when a
    channel of that kind opens: a guest's agent on its virtio-serial port loads
    neither the sockets' nor the serial line's (every module is start-up time
    under emulation, before the first reply)."""
    if listener is not None:
        from agent.transports.listen import serve_listener

        await serve_listener(listener, handler, task_status=task_status)
    elif spec.method == "virtio-serial":
        from agent.transports.virtio import serve_virtio_serial

        await serve_virtio_serial(spec.resolved_path, handler, task_status=task_status)
    elif spec.method == "isa-serial":
        from agent.transports.serial import serve_isa_serial

        await serve_isa_serial(spec.resolved_path, handler, spec.baud_rate, task_status=task_status)
    elif spec.method == "unix-listen":
        from agent.transports.unix import serve_unix_listen

        await serve_unix_listen(
            spec.resolved_path, spec.socket_mode, handler, task_status=task_status
        )
    else:
        from agent.transports.vsock import serve_vsock_listen

        await serve_vsock_listen(spec.resolved_path, handler, task_status=task_status)


def describe(spec: TransportSpec, listener: socket.socket | None = None) -> str:
    """The channel's name in messages and logs: its method and path (or address)."""
    if listener is None:
        return f"{spec.method} {spec.resolved_path}"
    try:
        address = listener.getsockname()
    except OSError:
        address = None
    if isinstance(address, tuple):  # vsock: (CID, port)
        address = ":".join(map(str, address))
    elif isinstance(address, bytes):  # a unix socket in the abstract namespace
        address = "@" + address[1:].decode(errors="replace")
    return f"{spec.method} {address or '(unnamed)'}, socket from systemd"


class StartedOnce:
    """A task status that may be reported more than once; the first one counts,
    and runs ``on_started`` first."""

    def __init__(
        self, task_status: trio.TaskStatus[None], on_started: Callable[[], None] = lambda: None
    ) -> None:
        self._task_status = task_status
        self._on_started = on_started
        self.reported = False

    def started(self, value: None = None) -> None:
        if not self.reported:
            self.reported = True
            self._on_started()
            self._task_status.started(value)
