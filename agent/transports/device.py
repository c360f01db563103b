"""A device the agent keeps open, served as one ``trio.abc.Stream`` per conversation.

virtio-serial ports and serial lines are opened once; the host comes and goes
on the other side. Each conversation gets a fresh :class:`DeviceStream` (so a
fresh parser in the session) over the same :class:`Device`. Closing the
stream ends the conversation, never the device: the transport closes that.

A device error is not the end of a conversation but of the transport. The
stream raises it as ``trio.BrokenResourceError`` (the stream contract, the
cause chained), which ends the session; the :class:`Device` keeps it, and
the transport raises it once the conversation is over, so that
``--retry-path`` can reopen the device.
"""

from __future__ import annotations

import functools
import os
import select
from collections.abc import Awaitable, Callable, Sequence

import trio

from agent.transports.after_reply import PollWhileAnswered
from agent.transports.contract import (
    MAX_BUFFERS,
    Bytes,
    ExchangeStream,
    OneAtATime,
    receive_size,
    unsent,
)

DEFAULT_READ = 64 * 1024
HOST_RETURN_WAIT = 2.0  # seconds a reply waits for a host to attach (see _wait_for_host)
HOST_POLL = 0.01


class Device:
    """The descriptors of an open device (not owned) and the first error met on them.

    ``fd_out`` is ``fd_in`` for a real device; the two may differ where a pair
    of pipes stands in for a device (tests).
    """

    def __init__(self, fd_in: int, fd_out: int | None = None) -> None:
        self.fd_in = fd_in
        self.fd_out = fd_in if fd_out is None else fd_out
        self._failure: OSError | None = None

    def fail(self, err: OSError) -> trio.BrokenResourceError:
        """Keep ``err`` for the transport; the stream error to raise (from ``err``)."""
        if self._failure is None:
            self._failure = err
        return trio.BrokenResourceError(f"device error: {err.strerror or err}")

    def check(self) -> None:
        """Raise the error the device met, if any: it cannot serve another conversation."""
        if self._failure is not None:
            raise self._failure


class DeviceStream(ExchangeStream):
    """One conversation over a :class:`Device`, with the contract of trio's ``FdStream``."""

    def __init__(self, device: Device) -> None:
        self._device = device
        self._closed = False
        self._sending = OneAtATime("sending")
        self._receiving = OneAtATime("receiving")
        self._after_reply = PollWhileAnswered()
        # Bytes have come in this conversation, by whichever call read them.
        self.had_data = False

    async def end_of_file(self) -> bool:
        """A read gave zero bytes: True ends the conversation, False reads again.

        Subclasses decide what a zero read means on their device; they must
        wait or raise rather than return False at once forever.
        """
        return True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = receive_size(max_bytes, DEFAULT_READ)
        with self._receiving:
            await trio.lowlevel.checkpoint()
            return await self._read(size)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            await self._write(data)

    async def send_all_pieces(self, pieces: Sequence[Bytes]) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            fd = self._device.fd_out
            self._check_open()
            views = [memoryview(piece) for piece in pieces]
            while views:
                try:
                    views = unsent(views, os.writev(fd, views[:MAX_BUFFERS]))
                except BlockingIOError:
                    await self._wait_to_write(fd)
                except OSError as err:
                    raise self._device.fail(err) from err

    async def send_then_receive(
        self, data: bytes | bytearray | memoryview, max_bytes: int | None = None
    ) -> bytes:
        size = receive_size(max_bytes, DEFAULT_READ)
        with self._sending, self._receiving:
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._write(data)
            read = await self._after_reply.next_message(functools.partial(self._try_read, size))
            return read if read is not None else await self._read(size)

    def _read_now(self, size: int) -> bytes:
        """One read(2): what is waiting (empty at a zero read); BlockingIOError
        when nothing is. Every read of the stream is one of these."""
        self._check_open()
        try:
            data = os.read(self._device.fd_in, size)
        except BlockingIOError:
            raise
        except OSError as err:
            raise self._device.fail(err) from err
        if data:
            self.had_data = True
        return data

    def _try_read(self, size: int) -> bytes | None:
        """What is waiting, or None: nothing yet, or a zero read, which
        :meth:`_read` leaves to :meth:`end_of_file`."""
        try:
            return self._read_now(size) or None
        except BlockingIOError:
            return None

    async def _read(self, size: int) -> bytes:
        while True:
            try:
                data = self._read_now(size)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable, self._device.fd_in)
                continue
            if data or await self.end_of_file():
                return data

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        fd = self._device.fd_out
        self._check_open()
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                try:
                    sent += os.write(fd, view[sent:])
                except BlockingIOError:
                    await self._wait_to_write(fd)
                except OSError as err:
                    raise self._device.fail(err) from err

    async def _wait_to_write(self, fd: int) -> None:
        if hung_up(fd):
            await self._wait_for_host(fd)
        else:
            await self._wait(trio.lowlevel.wait_writable, fd)

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            await self._wait(trio.lowlevel.wait_writable, self._device.fd_out)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # A task of this conversation waiting on the device wakes up with
            # ClosedResourceError; the descriptors stay open for the next one.
            trio.lowlevel.notify_closing(self._device.fd_in)
            trio.lowlevel.notify_closing(self._device.fd_out)
        await trio.lowlevel.checkpoint()

    async def _wait_for_host(self, fd: int) -> None:
        """A write would block and no host is attached: wait a moment for one.

        A host that has just connected, and sent a request at once, may not
        show as attached yet when the reply is written: virtio-serial tells
        the guest in a control message, handled after the port's data (a
        reconnecting host lost about one reply in forty this way under
        emulation). Nobody attached within HOST_RETURN_WAIT: the host is gone,
        and so is the reply. A hang-up wakes every poll at once, so this one
        looks again every HOST_POLL.
        """
        deadline = trio.current_time() + HOST_RETURN_WAIT
        while hung_up(fd):
            if trio.current_time() >= deadline:
                raise trio.BrokenResourceError("the host went away")
            self._check_open()
            await trio.sleep(HOST_POLL)

    async def _wait(self, wait: Callable[[int], Awaitable[None]], fd: int) -> None:
        self._check_open()
        await wait(fd)

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the conversation is over")


def hung_up(fd: int) -> bool:
    """Does the device report a hang-up (no peer attached) right now?"""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLHUP for _, events in poller.poll(0))
