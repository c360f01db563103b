"""The lean socket stream that serves listening-socket clients."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from agent.transports.socket_stream import EAGER_RECEIVES, SocketStream


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


def scheduler_passes() -> int:
    points: int = trio.lowlevel.current_task()._schedule_points
    return points


async def test_a_flood_still_passes_through_the_scheduler() -> None:
    """Data always waiting: receive yields every EAGER_RECEIVES calls, send every call."""
    left, right = stream_pair()
    await left.send_all(b"x" * (EAGER_RECEIVES * 4))
    before = scheduler_passes()
    for _ in range(EAGER_RECEIVES - 1):
        assert await right.receive_some(1) == b"x"
    assert scheduler_passes() == before  # the lean path: no pass yet
    assert await right.receive_some(1) == b"x"
    assert scheduler_passes() == before + 1
    await right.send_all(b"y")
    assert scheduler_passes() == before + 2
    await left.aclose()
    await right.aclose()


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
