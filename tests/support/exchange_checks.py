"""What every :class:`~agent.transports.contract.ExchangeStream` must do with
``send_then_receive`` and ``send_all_pieces``, checked on a pair of connected streams (as trio's
``check_two_way_stream`` checks the rest of the contract)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from agent.transports.contract import ExchangeStream

PairMaker = Callable[[], Awaitable[tuple[ExchangeStream, ExchangeStream]]]
Check = Callable[[PairMaker], Awaitable[None]]


async def one_checkpoint(make_pair: PairMaker) -> None:
    """The reply and the next read: a checkpoint, whether the answer waits or not."""
    left, right = await make_pair()
    await right.send_all(b"next")  # already waiting
    with trio.testing.assert_checkpoints():
        assert await left.send_then_receive(b"reply") == b"next"
    assert await right.receive_some() == b"reply"

    async def answer() -> None:
        assert await right.receive_some() == b"reply 2"
        await right.send_all(b"next 2")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        with trio.testing.assert_checkpoints():
            assert await left.send_then_receive(b"reply 2") == b"next 2"
    await left.aclose()
    await right.aclose()


async def cancelled_before_sends_nothing(make_pair: PairMaker) -> None:
    left, right = await make_pair()
    with trio.CancelScope() as scope:
        scope.cancel()
        await left.send_then_receive(b"reply")
    assert scope.cancelled_caught
    with trio.move_on_after(0.05):
        await right.receive_some()
        pytest.fail("a cancelled send_then_receive sent its reply")
    await left.aclose()
    await right.aclose()


async def cancelled_while_waiting_after_the_reply(make_pair: PairMaker) -> None:
    """No answer: it sleeps until one comes; cancelled then, the reply has gone whole."""
    left, right = await make_pair()
    with trio.move_on_after(0.05) as scope:
        await left.send_then_receive(b"reply")
    assert scope.cancelled_caught
    assert await right.receive_some() == b"reply"
    await left.aclose()
    await right.aclose()


async def conflicts_with_a_send_or_a_receive(make_pair: PairMaker) -> None:
    left, right = await make_pair()
    for other in (left.receive_some, lambda: left.send_all(b"x")):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.send_then_receive, b"reply")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await other()
            await right.send_all(b"done")
    await left.aclose()
    await right.aclose()


async def pieces_arrive_whole_and_in_order(make_pair: PairMaker) -> None:
    """Pieces far beyond the buffers (a big read's base64): the writes wait for the
    reader, and resume in the middle of a piece; an empty piece is no trouble."""
    left, right = await make_pair()
    pieces = [b"{", os.urandom(3 << 20), b"", os.urandom(1 << 20), b"}\n"]
    expected = b"".join(pieces)
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(expected):
            received.extend(await right.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        with trio.testing.assert_checkpoints():
            await left.send_all_pieces(pieces)
    assert received == expected
    await left.aclose()
    await right.aclose()


async def pieces_cancelled_before_send_nothing(make_pair: PairMaker) -> None:
    left, right = await make_pair()
    with trio.CancelScope() as scope:
        scope.cancel()
        await left.send_all_pieces([b"one", b"two"])
    assert scope.cancelled_caught
    await left.send_all(b"after")
    assert await right.receive_some() == b"after"
    await left.aclose()
    await right.aclose()


async def pieces_conflict_with_a_send(make_pair: PairMaker) -> None:
    left, right = await make_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all_pieces, [os.urandom(8 << 20)])  # more than fits
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await left.send_all(b"x")
        nursery.cancel_scope.cancel()
    await left.aclose()
    await right.aclose()


CHECKS: tuple[Check, ...] = (
    one_checkpoint,
    cancelled_before_sends_nothing,
    cancelled_while_waiting_after_the_reply,
    conflicts_with_a_send_or_a_receive,
    pieces_arrive_whole_and_in_order,
    pieces_cancelled_before_send_nothing,
    pieces_conflict_with_a_send,
)
