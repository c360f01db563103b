"""The streams of the device transports (virtio-serial, isa-serial) keep trio's
stream contract; two pipes stand in for the device in each direction."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from agent.transports import device as device_module
from agent.transports.device import Device, DeviceStream
from agent.transports.serial import LineStream
from agent.transports.virtio import PortStream
from tests.support import exchange_checks


class ClosesDevice(DeviceStream):
    """Closing a conversation leaves the device open; here the device is the
    test's pipes, closed with the stream so that the peer sees it go."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            for fd in {self._device.fd_in, self._device.fd_out}:
                with contextlib.suppress(OSError):
                    os.close(fd)


class OwnDevice(ClosesDevice):
    pass


class OwnPort(ClosesDevice, PortStream):
    pass


class OwnLine(ClosesDevice, LineStream):
    pass


StreamPairMaker = Callable[[], Awaitable[tuple[DeviceStream, DeviceStream]]]


def pipe() -> tuple[int, int]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write


def clog(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(fd, b"x" * 65536)


def pair_maker(kind: type[ClosesDevice], clogged: bool = False) -> StreamPairMaker:
    async def make() -> tuple[DeviceStream, DeviceStream]:
        left_to_right, right_to_left = pipe(), pipe()
        left = kind(Device(right_to_left[0], left_to_right[1]))
        right = kind(Device(left_to_right[0], right_to_left[1]))
        # One byte each way: on a virtio-serial port a host is attached from now on.
        for sender, receiver in ((left, right), (right, left)):
            await sender.send_all(b"!")
            assert await receiver.receive_some(1) == b"!"
        if clogged:
            clog(left_to_right[1])
            clog(right_to_left[1])
        return left, right

    return make


@pytest.mark.parametrize("kind", [OwnDevice, OwnPort, OwnLine])
async def test_keeps_trio_stream_contract(kind: type[ClosesDevice]) -> None:
    await trio.testing.check_two_way_stream(pair_maker(kind), pair_maker(kind, clogged=True))


@pytest.mark.parametrize("kind", [OwnDevice, OwnPort, OwnLine])
@pytest.mark.parametrize("check", exchange_checks.CHECKS)
async def test_send_then_receive(kind: type[ClosesDevice], check: exchange_checks.Check) -> None:
    await check(pair_maker(kind))


@pytest.mark.parametrize("request_comes", ["at once", "later"])
async def test_a_port_whose_first_call_is_send_then_receive_ends_when_the_host_goes(
    request_comes: str,
) -> None:
    """Bytes read by send_then_receive count as the host's, whatever the session
    called before: when the host then goes away, the conversation ends instead
    of waiting for a host that is already there (the "no host yet" backoff)."""
    host_to_agent, agent_to_host = pipe(), pipe()
    stream = PortStream(Device(host_to_agent[0], agent_to_host[1]), backoff=0.01)
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                if request_comes == "at once":  # found by the poll after the reply
                    os.write(host_to_agent[1], b"request")
                else:  # read once the reply is out and nothing came yet

                    async def send_later() -> None:
                        await trio.testing.wait_all_tasks_blocked()
                        os.write(host_to_agent[1], b"request")

                    nursery.start_soon(send_later)
                assert await stream.send_then_receive(b"reply") == b"request"
            assert os.read(agent_to_host[0], 16) == b"reply"
            os.close(host_to_agent[1])  # the host goes away
            assert await stream.receive_some() == b""
    finally:
        await stream.aclose()
        for fd in (host_to_agent[0], *agent_to_host):
            os.close(fd)


async def test_a_port_without_a_host_yet_reads_again_after_the_backoff() -> None:
    """A zero read before any byte means no host is attached: not the end."""
    host_to_agent, agent_to_host = pipe(), pipe()
    os.close(host_to_agent[1])  # every read is a zero read, as on a port with no host
    stream = PortStream(Device(host_to_agent[0], agent_to_host[1]), backoff=0.01)
    try:
        with trio.move_on_after(0.2) as waiting:
            await stream.receive_some()
        assert waiting.cancelled_caught  # still waiting for a host
        assert not stream.had_data
    finally:
        await stream.aclose()
        for fd in (host_to_agent[0], *agent_to_host):
            os.close(fd)


async def test_a_device_error_is_broken_resource_and_kept_for_the_transport() -> None:
    read, write = pipe()
    os.close(read)  # writing now fails with EPIPE: the device is gone
    device = Device(write)
    stream = DeviceStream(device)
    with pytest.raises(trio.BrokenResourceError) as caught:
        await stream.send_all(b"x")
    assert isinstance(caught.value.__cause__, BrokenPipeError)
    await stream.aclose()
    with pytest.raises(BrokenPipeError):
        device.check()
    os.close(write)


async def test_a_read_error_after_the_reply_is_broken_resource_and_kept() -> None:
    to_host = pipe()
    # A descriptor that fails every read with EISDIR stands in for the failing port.
    failing = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    device = Device(failing, to_host[1])
    stream = DeviceStream(device)
    with pytest.raises(trio.BrokenResourceError) as caught:
        await stream.send_then_receive(b"reply")
    assert isinstance(caught.value.__cause__, IsADirectoryError)
    assert os.read(to_host[0], 16) == b"reply"  # the reply went out first
    await stream.aclose()
    with pytest.raises(IsADirectoryError):
        device.check()
    for fd in (failing, *to_host):
        os.close(fd)


async def test_a_hung_up_line_ends_the_conversation_and_the_device() -> None:
    read, write = pipe()
    os.close(write)  # the other end of the line is gone
    device = Device(read)
    stream = LineStream(device)
    assert await stream.receive_some() == b""
    with pytest.raises(OSError, match="the serial line hung up") as caught:
        device.check()
    assert caught.value.errno == errno.EIO
    os.close(read)


def drain(fd: int) -> bytes:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    return data


async def test_a_reply_waits_for_a_host_that_is_attaching(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """virtio-serial tells the guest that a host attached after the host's first bytes
    may have been read: the reply to them waits for it rather than being dropped."""
    to_host = pipe()
    clog(to_host[1])  # the write would block, as on a port with no host
    attached = False
    monkeypatch.setattr(device_module, "hung_up", lambda fd: not attached)
    stream = DeviceStream(Device(to_host[0], to_host[1]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"the reply")
        await trio.sleep(device_module.HOST_RETURN_WAIT / 2)
        attached = True  # the host is there now, and reads
        taken = drain(to_host[0])
        await trio.sleep(1)
    assert (taken + drain(to_host[0])).endswith(b"the reply")
    for fd in to_host:
        os.close(fd)


async def test_a_reply_for_a_host_that_stays_away_is_dropped(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    to_host = pipe()
    clog(to_host[1])
    monkeypatch.setattr(device_module, "hung_up", lambda fd: True)
    stream = DeviceStream(Device(to_host[0], to_host[1]))
    started = trio.current_time()
    with pytest.raises(trio.BrokenResourceError, match="the host went away"):
        await stream.send_all(b"the reply")
    assert trio.current_time() - started == pytest.approx(device_module.HOST_RETURN_WAIT, abs=0.1)
    for fd in to_host:
        os.close(fd)
