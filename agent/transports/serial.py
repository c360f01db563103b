"""isa-serial: a serial line (``/dev/ttyS0``), raw, 38400 baud as with qemu-ga.

trio-serial opens and configures the line (raw mode, 8N1, no flow control,
the baud rate); the conversation runs over its descriptor. A serial line has
no notion of a host connecting or leaving, so one conversation lasts as long
as the line: a new host resynchronises with 0xFF, as the protocol intends.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, cast

import trio

from agent.transports.conversation import serve_conversation
from agent.transports.device import Device, DeviceStream, hung_up
from agent.transports.spec import DEFAULT_BAUD_RATE
from agent.transports.types import StreamHandler

if TYPE_CHECKING:
    from trio_serial.posix import PosixSerialStream

log = logging.getLogger(__name__)

FAILED_SESSION_BACKOFF = 0.1  # seconds before the next conversation after a failed one


class LineStream(DeviceStream):
    """The conversation on a serial line."""

    async def end_of_file(self) -> bool:
        # In raw mode an empty read is spurious unless the line hung up. A
        # hang-up ends the conversation, and the transport raises it.
        if hung_up(self._device.fd_in):
            self._device.fail(OSError(errno.EIO, "the serial line hung up"))
            return True
        await trio.lowlevel.checkpoint()
        return False


async def serve_isa_serial(
    path: str,
    handler: StreamHandler,
    baud_rate: int = DEFAULT_BAUD_RATE,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the serial line at ``path`` until cancelled; raises the line's error."""
    import trio_serial  # here: an agent on another transport does not load it at start

    # On every POSIX system trio-serial's class is a PosixSerialStream, with a descriptor.
    opened = trio_serial.SerialStream(path, baudrate=baud_rate, exclusive=True)
    line = cast("PosixSerialStream", opened)
    async with line:
        # What waits in the input buffer was sent to nobody (qemu-ga flushes it too).
        await line.discard_input()
        log.info("serving serial line %s at %d baud", path, baud_rate)
        task_status.started()
        device = Device(line.fd)
        while True:
            if not await serve_conversation(handler, LineStream(device)):
                await trio.sleep(FAILED_SESSION_BACKOFF)  # one that fails at once must not spin
            device.check()
