"""The lean socket stream that serves listening-socket clients."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from agent.transports.contract import unsent
from agent.transports.listen import serve_listener
from agent.transports.socket_stream import SocketStream
from tests.support import exchange_checks

if TYPE_CHECKING:
    from typing_extensions import Buffer


def stream_pair() -> tuple[SocketStream, SocketStream]:
    left, right = socket.socketpair()
    return SocketStream(left), SocketStream(right)


async def test_big_transfers_in_both_directions_arrive_whole() -> None:
    left, right = stream_pair()
    payload = os.urandom(8 << 20)  # far beyond the socket buffers: send_all must wait

    async def receive_all(stream: SocketStream, size: int, into: list[bytes]) -> None:
        got = 0
        while got < size:
            data = await stream.receive_some()
            assert data
            into.append(data)
            got += len(data)

    to_right: list[bytes] = []
    to_left: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, payload)
        nursery.start_soon(right.send_all, payload[::-1])
        nursery.start_soon(receive_all, right, len(payload), to_right)
        nursery.start_soon(receive_all, left, len(payload), to_left)
    assert b"".join(to_right) == payload
    assert b"".join(to_left) == payload[::-1]
    await left.aclose()
    await right.aclose()


async def test_end_of_stream() -> None:
    left, right = stream_pair()
    await left.aclose()
    assert await right.receive_some() == b""
    await right.aclose()


async def test_receive_waits_and_can_be_cancelled(autojump_clock: trio.abc.Clock) -> None:
    left, right = stream_pair()
    with trio.move_on_after(5) as scope:
        await right.receive_some()
    assert scope.cancelled_caught
    await left.aclose()
    await right.aclose()


async def clogged_stream_pair() -> tuple[SocketStream, SocketStream]:
    """A pair where neither stream can send until the other one receives."""
    left, right = socket.socketpair()
    for sock in (left, right):
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.send(b"x" * 65536)
    return SocketStream(left), SocketStream(right)


async def made_stream_pair() -> tuple[SocketStream, SocketStream]:
    return stream_pair()


async def test_keeps_trio_stream_contract() -> None:
    """Checkpoints, error translation, conflicts, half-close: as trio's own streams."""
    await trio.testing.check_half_closeable_stream(made_stream_pair, clogged_stream_pair)


def scheduler_passes() -> int:
    points: int = trio.lowlevel.current_task()._schedule_points
    return points


async def test_every_operation_passes_through_the_scheduler() -> None:
    """Even with data waiting, a flood cannot starve the other tasks."""
    left, right = stream_pair()
    await left.send_all(b"x" * 4)
    before = scheduler_passes()
    for _ in range(4):
        assert await right.receive_some(1) == b"x"
    await right.send_all(b"y")
    assert scheduler_passes() == before + 5
    await left.aclose()
    await right.aclose()


@pytest.mark.parametrize("code", [errno.ETIMEDOUT, errno.ECONNRESET, errno.EHOSTUNREACH, errno.EIO])
async def test_every_socket_error_is_broken_resource_with_its_cause(code: int) -> None:
    class Failing(socket.socket):
        def recv(self, size: int, flags: int = 0) -> bytes:
            raise OSError(code, os.strerror(code))

        def send(self, data: Buffer, flags: int = 0) -> int:
            raise OSError(code, os.strerror(code))

    left, right = socket.socketpair()
    stream = SocketStream(Failing(fileno=left.detach()))
    for operation in (stream.receive_some(), stream.send_all(b"x")):
        with pytest.raises(trio.BrokenResourceError) as caught:
            await operation
        assert isinstance(caught.value.__cause__, OSError)
        assert caught.value.__cause__.errno == code
    await stream.aclose()
    right.close()


async def test_peer_gone_is_broken_resource() -> None:
    left, right = stream_pair()
    await right.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await left.send_all(b"x" * (8 << 20))  # more than the buffers: the send meets the close
    await left.aclose()


async def test_closed_stream_is_closed_resource() -> None:
    left, right = stream_pair()
    await left.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await left.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")
    await left.aclose()  # twice is fine
    await right.aclose()


async def exchange_pair() -> tuple[SocketStream, SocketStream]:
    return stream_pair()


@pytest.mark.parametrize("check", exchange_checks.CHECKS)
async def test_send_then_receive(check: exchange_checks.Check) -> None:
    await check(exchange_pair)


async def test_send_then_receive_maps_errors_of_either_half() -> None:
    class RecvFails(socket.socket):
        def recv(self, size: int, flags: int = 0) -> bytes:
            raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))

    left, right = socket.socketpair()
    stream = SocketStream(RecvFails(fileno=left.detach()))
    with pytest.raises(trio.BrokenResourceError) as caught:
        await stream.send_then_receive(b"reply")
    assert isinstance(caught.value.__cause__, OSError)
    assert right.recv(16) == b"reply"  # the send half was done
    right.close()
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_then_receive(b"x" * (8 << 20))  # the peer is gone
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_then_receive(b"reply")


async def test_a_listener_s_connections_share_one_post_reply_poll(tmp_path: Path) -> None:
    """One host, one pace: what the poll learnt of the host on one connection holds
    on the next (``agent.transports.after_reply``)."""
    policies: list[object] = []
    both_served = trio.Event()

    async def handler(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, SocketStream)
        policies.append(stream._after_reply)
        if len(policies) == 2:
            both_served.set()

    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(path)
        listening.listen()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_listener, listening, handler)
            for _ in range(2):
                client = await trio.open_unix_socket(path)
                await client.aclose()
            await both_served.wait()
            nursery.cancel_scope.cancel()
    assert policies[0] is policies[1]


@pytest.mark.parametrize(
    ("sent", "left"),
    [
        (0, [b"ab", b"", b"cde"]),
        (1, [b"b", b"", b"cde"]),
        (2, [b"cde"]),  # a piece sent whole is dropped, and an empty one after it
        (3, [b"de"]),
        (5, []),
    ],
)
def test_unsent_is_what_a_gather_write_left(sent: int, left: list[bytes]) -> None:
    views = [memoryview(piece) for piece in (b"ab", b"", b"cde")]
    assert [bytes(view) for view in unsent(views, sent)] == left
