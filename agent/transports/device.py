"""A device the agent keeps open, served as one ``trio.abc.Stream`` per conversation.

virtio-serial ports and serial lines are opened once; the host comes and goes
on the other side. Each conversation gets a fresh :class:`DeviceStream` (so a
fresh parser in the session) over the same descriptor. Closing the stream
ends the conversation, never the device: the transport closes that.

A device error is not the end of a conversation but of the transport: the
stream records it in :attr:`DeviceStream.failure` and raises
``trio.BrokenResourceError`` (the stream contract), the session ends, and the
transport raises the recorded error so that ``--retry-path`` can reopen the
device.
"""

from __future__ import annotations

import os
import select

import trio

DEFAULT_READ = 64 * 1024


class DeviceStream(trio.abc.Stream):
    """One conversation over a device descriptor the stream does not own.

    ``fd_out`` is ``fd_in`` for a real device; the two may differ where a pair
    of pipes stands in for a device (tests).
    """

    def __init__(self, fd_in: int, fd_out: int | None = None) -> None:
        self._fd_in = fd_in
        self._fd_out = fd_in if fd_out is None else fd_out
        self._closed = False
        self.failure: OSError | None = None

    async def end_of_file(self) -> bool:
        """A read gave zero bytes: True ends the conversation, False reads again.

        Subclasses decide what a zero read means on their device; they must
        wait or raise rather than return False at once forever.
        """
        return True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            self._check_open()
            await trio.lowlevel.wait_readable(self._fd_in)
            try:
                data = os.read(self._fd_in, max_bytes or DEFAULT_READ)
            except BlockingIOError:
                continue
            except OSError as err:
                raise self._fail(err) from err
            if data or await self.end_of_file():
                return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        await trio.lowlevel.checkpoint()
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                try:
                    sent += os.write(self._fd_out, view[sent:])
                except BlockingIOError:
                    if hung_up(self._fd_out):
                        # Nobody will take these bytes: the peer is gone.
                        raise trio.BrokenResourceError("the host went away") from None
                    await trio.lowlevel.wait_writable(self._fd_out)
                except OSError as err:
                    raise self._fail(err) from err

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._fd_out)

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the conversation is over")

    def _fail(self, err: OSError) -> trio.BrokenResourceError:
        self.failure = err
        return trio.BrokenResourceError(f"device error: {err}")


def hung_up(fd: int) -> bool:
    """Does the device report a hang-up (no peer attached) right now?"""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLHUP for _, events in poller.poll(0))
