"""Listening sockets (unix-listen, vsock-listen, systemd's): one client at a time."""

from __future__ import annotations

import logging
import socket

import trio

from agent.transports.types import StreamHandler

log = logging.getLogger(__name__)


async def serve_listener(
    sock: socket.socket,
    handler: StreamHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the clients of the listening ``sock`` one after another.

    A client that connects while another is served waits in the listen
    queue, as with qemu-ga. ``sock`` stays open: its owner closes it.
    """
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    task_status.started()
    while True:
        stream = await listener.accept()
        log.debug("client connected")
        await handler(stream)
        log.debug("client disconnected")
