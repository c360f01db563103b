"""Big base64 payloads encoded in pieces, the other sessions running between them.

pybase64 holds the GIL: a 48 MiB read's reply (64 MiB of base64) encoded in
one call would stop every other session of the agent for all of it, in a
worker thread as much as on the event loop. Encoded in pieces of
:data:`PIECE` bytes with a pass through the scheduler between them, a
session on another transport waits one piece at most; the pieces go out as
they are (``agent.wire.encoder``), never joined.
"""

from __future__ import annotations

from typing import TypeGuard

import trio

from agent.wire.payload import Base64Payload

# Bytes encoded at a time: a multiple of 3, so that the pieces' base64 joins
# up without padding inside; well under a millisecond of encoding (its output
# may have to be faulted in: the page faults are counted in the piece too).
PIECE = 3 * 256 * 1024


def has_big_payload(value: object) -> TypeGuard[dict[str, object]]:
    """Whether ``value`` (a handler's return) holds a payload worth encoding in
    pieces. On every reply: a plain loop, a third of ``any()`` over a generator."""
    if type(value) is dict:
        for item in value.values():
            if type(item) is Base64Payload and len(item.data) > PIECE:
                return True
    return False


async def encode_big_payloads(value: dict[str, object]) -> dict[str, object]:
    """``value`` with each big payload encoded in pieces (see the module's doc)."""
    encoded: dict[str, object] = {}
    for key, item in value.items():
        if type(item) is Base64Payload and len(item.data) > PIECE:
            item = Base64Payload(b"", await _encode(item.data))
        encoded[key] = item
    return encoded


async def _encode(data: bytes | bytearray) -> tuple[bytes, ...]:
    import pybase64  # with the first payload, not at start: a first reply has none

    pieces = []
    with memoryview(data) as view:
        for start in range(0, len(view), PIECE):
            await trio.lowlevel.checkpoint()
            pieces.append(pybase64.b64encode(view[start : start + PIECE]))
    return tuple(pieces)
