"""One conversation of a transport: the transport that opened the stream closes it, once."""

from __future__ import annotations

import logging

import pytest
import trio

from agent.transports.conversation import serve_conversation


class CountingStream(trio.abc.Stream):
    """A stream that only counts its closes."""

    def __init__(self) -> None:
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1
        await trio.lowlevel.checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    async def wait_send_all_might_not_block(self) -> None:
        raise NotImplementedError

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise NotImplementedError


async def test_the_stream_is_closed_once_after_the_session() -> None:
    stream = CountingStream()
    seen: list[int] = []

    async def handler(given: trio.abc.Stream) -> None:
        seen.append(stream.closes)  # open while served

    assert await serve_conversation(handler, stream)
    assert seen == [0]
    assert stream.closes == 1


async def test_a_failing_session_is_logged_closed_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = CountingStream()

    async def handler(given: trio.abc.Stream) -> None:
        raise OSError(5, "Input/output error")

    with caplog.at_level(logging.ERROR):
        assert not await serve_conversation(handler, stream)
    assert stream.closes == 1
    assert "a session ended on an error: OSError: [Errno 5] Input/output error" in caplog.text


async def test_cancellation_goes_through_and_still_closes() -> None:
    stream = CountingStream()

    async def handler(given: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(0.01) as scope:
        await serve_conversation(handler, stream)
    assert scope.cancelled_caught
    assert stream.closes == 1
