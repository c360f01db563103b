"""The session's policies and its one writer, each on its own (``agent/core``):
read sizes, memory release, and the outbox of replies."""

from __future__ import annotations

import socket

import trio
import trio.testing

from agent.core.memory_release import BULK, BULK_PIECE, QUIET, MemoryRelease
from agent.core.outbox import JOIN_LIMIT, Outbox
from agent.core.read_sizes import MAX_READ, MIN_READ, ReadSizes
from agent.transports.socket_stream import SocketStream


def test_reads_grow_while_they_fill_and_halve_when_they_do_not() -> None:
    sizes = ReadSizes()
    assert sizes.next == MIN_READ
    while sizes.next < MAX_READ:
        sizes.received(sizes.next)
    sizes.received(MAX_READ)
    assert sizes.next == MAX_READ
    sizes.received(MAX_READ // 2)  # half full: a transfer's short read keeps the size
    assert sizes.next == MAX_READ
    sizes.received(100)
    assert sizes.next == MAX_READ // 2
    for _ in range(10):
        sizes.received(100)
    assert sizes.next == MIN_READ


def test_memory_goes_back_once_bulk_data_moved_and_the_host_is_quiet() -> None:
    released: list[int] = []
    memory = MemoryRelease(lambda: released.append(1))
    replies = [b"x" * 10]
    for _ in range(1000):  # small requests never count
        assert memory.quiet_time(BULK_PIECE // 2, replies) is None
    assert memory.quiet_time(BULK // 2, replies) is None
    assert memory.quiet_time(BULK // 2, replies) == QUIET
    memory.release()
    assert released == [1]
    assert memory.quiet_time(100, replies) is None  # counted afresh
    memory.session_over()
    assert released == [1]  # no bulk since
    memory.quiet_time(BULK, replies)
    memory.session_over()
    assert released == [1, 1]


def test_without_a_release_function_memory_is_never_waited_for() -> None:
    memory = MemoryRelease(None)
    assert memory.quiet_time(10 * BULK, []) is None
    memory.session_over()


class Recording(trio.abc.Stream):
    """A stream that records each write (not an ExchangeStream)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        raise NotImplementedError

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return b"next"

    async def aclose(self) -> None:
        pass


async def test_small_replies_go_out_in_one_write_big_pieces_as_they_are() -> None:
    stream = Recording()
    outbox = Outbox(stream)
    outbox.add([b"one\n"])
    outbox.add([b"two\n"])
    assert len(outbox) == 8
    assert await outbox.send_then_receive(10) == b"next"
    assert stream.writes == [b"one\ntwo\n"]
    big = b"x" * JOIN_LIMIT
    outbox.add([b"head", big, b"tail\n"])
    await outbox.flush()
    assert stream.writes[1:] == [b"head", big, b"tail\n"]
    assert len(outbox) == 0
    await outbox.flush()  # nothing due: nothing written
    assert len(stream.writes) == 4


async def test_replies_go_out_and_the_next_read_comes_back_in_one_call() -> None:
    ours, theirs = socket.socketpair()
    stream = SocketStream(ours)
    outbox = Outbox(stream)
    outbox.add([b"reply\n"])
    theirs.sendall(b"request")
    with trio.testing.assert_checkpoints():
        assert await outbox.send_then_receive(100) == b"request"
    assert theirs.recv(100) == b"reply\n"
    assert await outbox.send_then_receive_within(100, 0.001) is None  # nothing came
    theirs.close()
    await stream.aclose()
