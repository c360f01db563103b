"""Replies to bytes, sans-IO: one newline-terminated JSON line per reply, as qemu-ga lays it out.

Big base64 payloads (:class:`~agent.wire.payload.Base64Payload`) go out as
pieces of their own, never copied into the line.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from agent.wire.delimiter import DELIMITER
from agent.wire.payload import Base64Payload


class _Absent(enum.Enum):
    """Marks a request without ``id`` (``None`` is a valid id: JSON null)."""

    ABSENT = enum.auto()


NO_ID = _Absent.ABSENT
RequestId = object  # any JSON value, or NO_ID

_json_encode = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode
_encode_ascii_string = json.encoder.encode_basestring_ascii
# Base64 payloads up to this size go in the reply line; bigger ones are sent as
# pieces of their own, without being copied into it.
INLINE_PAYLOAD = 64 * 1024


def _encode(value: object) -> str:
    """JSON text of ``value``, always valid for a strict parser, however deep.

    A str may hold lone surrogates (a file name's undecodable bytes, as
    ``os`` decodes them with surrogateescape); ``ensure_ascii`` would write
    them as ``\\udcXX`` escapes, which strict JSON parsers refuse. Such
    characters go out as U+FFFD. Real non-BMP characters are one code point
    in a str, untouched, and go out as a valid surrogate pair.
    """
    try:
        text = _json_encode(value)
        if "\\ud" not in text:  # one memchr-speed search on the common path
            return text
    except RecursionError:
        pass
    from agent.wire import deep_json  # rare: not imported before it is needed

    return deep_json.encode(value)


@dataclass(slots=True)
class ReturnReply:
    """A success reply: ``value`` for the request ``id``.

    ``delimited`` puts the 0xFF sentinel first, for ``guest-sync-delimited``.
    Not frozen: one is built for most requests, and a frozen dataclass of three
    fields costs three times as much to build (770 against 230 ns).
    """

    value: object
    id: RequestId = NO_ID
    delimited: bool = False


@dataclass(slots=True)  # not frozen, as ReturnReply
class ErrorReply:
    """An error reply, of qemu-ga's ``error_class``, for the request ``id``."""

    error_class: str
    desc: str
    id: RequestId = NO_ID


Reply = ReturnReply | ErrorReply


def encode_reply(reply: Reply) -> list[bytes]:
    """The bytes of ``reply``: one line, or the pieces of a line holding big
    :class:`Base64Payload` values (sent without being joined)."""
    if isinstance(reply, ErrorReply):
        return [encode_error(reply.error_class, reply.desc, reply.id)]
    value = reply.value
    if type(value) is dict and value and any(type(v) is Base64Payload for v in value.values()):
        return encode_return_parts(value, reply.id)
    return [encode_return(value, reply.id, delimited=reply.delimited)]


def encode_return_parts(value: dict[str, object], request_id: RequestId = NO_ID) -> list[bytes]:
    """Like :func:`encode_return` for an object holding :class:`Base64Payload` values.

    The reply comes in pieces, so a big payload is sent without being joined;
    a small one (a 4 KiB read's) goes in the line itself.
    """
    import pybase64  # with the first payload, not at start: a first reply has none

    parts: list[bytes] = []
    text = '{"return": {'
    for index, (key, item) in enumerate(value.items()):
        text += (", " if index else "") + _encode_key(key) + ": "
        if isinstance(item, Base64Payload):
            if item.encoded is not None:
                parts += [(text + '"').encode("ascii"), *item.encoded]
                text = '"'
            elif len(item.data) <= INLINE_PAYLOAD:
                text += '"' + pybase64.b64encode_as_string(item.data) + '"'
            else:
                parts += [(text + '"').encode("ascii"), pybase64.b64encode(item.data)]
                text = '"'
        else:
            text += _encode_value(item)
    text += "}"
    if request_id is not NO_ID:
        text += ', "id": ' + _encode_value(request_id)
    parts.append((text + "}\n").encode("ascii"))
    return parts


def _encode_key(key: str) -> str:
    """A member name (ASCII, from the schema) without the encoder's set-up."""
    return _encode_ascii_string(key) if key.isascii() else _encode(key)


def encode_return(
    value: object, request_id: RequestId = NO_ID, *, delimited: bool = False
) -> bytes:
    """One success reply line, as qemu-ga lays it out (``return`` before ``id``).

    ``delimited`` puts the 0xFF sentinel first, for ``guest-sync-delimited``.
    """
    text = '{"return": ' + _encode_value(value)
    if request_id is not NO_ID:
        text += ', "id": ' + _encode_value(request_id)
    line = (text + "}\n").encode("ascii")
    return DELIMITER + line if delimited else line


def _encode_value(value: object) -> str:
    """JSON text of ``value``, with a shortcut for the pings' and syncs' replies.

    The shortcuts save most of the encoder's per-call set-up on the hot path:
    ``json.JSONEncoder.encode`` builds its C encoder on every call. Measured
    against every reply encoded whole by a C encoder built once (the agent
    serving 20,000 pings in-process, best of 7): 22.2 us of CPU per ping
    against 19.0 us with these lines by hand; and ``benchmarks/ab.py --only
    connect-cpu`` 1.13x with the plain ``encode``. So replies are laid out
    by hand here, and only here.
    """
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is dict and not value:
        return "{}"
    return _encode(value)


def encode_error(error_class: str, desc: str, request_id: RequestId = NO_ID) -> bytes:
    """One error reply line (qemu-ga puts ``id`` first in error replies)."""
    reply: dict[str, object] = {}
    if request_id is not NO_ID:
        reply["id"] = request_id
    reply["error"] = {"class": error_class, "desc": desc}
    return (_encode(reply) + "\n").encode("ascii")
