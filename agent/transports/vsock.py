"""vsock-listen: an AF_VSOCK listening socket, ``-p CID:PORT`` as with qemu-ga."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import trio

from agent.transports.listen import serve_listener
from agent.transports.types import StreamHandler

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF


def parse_address(text: str) -> tuple[int, int]:
    """``CID:PORT`` in decimal; CID -1 is any (VMADDR_CID_ANY), as QEMU reads it."""
    cid, sep, port = text.partition(":")
    try:
        if not sep:
            raise ValueError
        numbers = int(cid, 10), int(port, 10)
    except ValueError:
        raise ValueError(f"vsock address must be CID:PORT, got '{text}'") from None
    if numbers[0] == -1:
        numbers = socket.VMADDR_CID_ANY, numbers[1]
    if not all(0 <= number <= _U32 for number in numbers):
        raise ValueError(f"vsock CID and port must be 32-bit unsigned numbers, got '{text}'")
    return numbers


@contextlib.contextmanager
def _listening_socket(address: str) -> Iterator[socket.socket]:
    cid, port = parse_address(address)
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    with sock:
        sock.bind((cid, port))
        sock.listen(1)
        yield sock


async def serve_vsock_listen(
    address: str,
    handler: StreamHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on vsock ``CID:PORT`` and serve clients one after another."""
    with _listening_socket(address) as sock:
        log.info("listening on vsock %s", address)
        await serve_listener(sock, handler, task_status=task_status)
