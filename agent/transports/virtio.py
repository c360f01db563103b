"""virtio-serial: the port QEMU wires to the host (``org.qemu.guest_agent.0``).

The port is a character device. While no host has the other end open (the
QEMU chardev has no client), the kernel reports it as hung up: poll() says
readable at once and read() returns zero bytes. That is "no host yet", not
the end: back off 100 ms, as qemu-ga does, and read again, rather than spin.
Once a conversation has had bytes, a zero read means the host went away:
the conversation ends, and the next host gets a new one with a clean parser.

A host that disconnects and reconnects within one backoff, without the
agent reading in between, looks like one conversation (the kernel shows no
trace of it): the 0xFF resync of the protocol covers that case.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import trio

from agent.transports.conversation import serve_conversation
from agent.transports.device import Device, DeviceStream
from agent.transports.types import StreamHandler

log = logging.getLogger(__name__)

NO_HOST_BACKOFF = 0.1  # seconds, qemu-ga's


class PortStream(DeviceStream):
    """One host conversation on a virtio-serial port."""

    def __init__(self, device: Device, backoff: float = NO_HOST_BACKOFF) -> None:
        super().__init__(device)
        self._backoff = backoff

    async def end_of_file(self) -> bool:
        """``had_data`` is set by every read, ``receive_some`` and
        ``send_then_receive`` alike, whatever order the session calls them in."""
        if self.had_data:
            return True  # the host went away: this conversation is over
        await trio.sleep(self._backoff)  # no host attached yet
        return False


@contextlib.contextmanager
def open_port(path: str) -> Iterator[int]:
    """The port, open for reading and writing, non-blocking."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


async def serve_virtio_serial(
    path: str,
    handler: StreamHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve host after host on the port at ``path`` until cancelled."""
    with open_port(path) as fd:
        log.info("serving virtio-serial port %s", path)
        task_status.started()
        await serve_port(fd, fd, handler)


async def serve_port(fd_in: int, fd_out: int, handler: StreamHandler) -> None:
    """Conversations one after another on an open port; raises the port's error."""
    device = Device(fd_in, fd_out)
    while True:
        if not await serve_conversation(handler, PortStream(device)):
            await trio.sleep(NO_HOST_BACKOFF)  # a session that fails at once must not spin
        device.check()
        log.debug("host went away; waiting for the next one")
