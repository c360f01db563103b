"""Replies to bytes, sans-IO: one newline-terminated JSON line per reply, as qemu-ga lays it out.

Big base64 payloads (:class:`~agent.wire.payload.Base64Payload`) go out as
pieces of their own, never copied into the line.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import pybase64

from agent.wire.framer import DELIMITER
from agent.wire.payload import Base64Payload


class _Absent(enum.Enum):
    """Marks a request without ``id`` (``None`` is a valid id: JSON null)."""

    ABSENT = enum.auto()


NO_ID = _Absent.ABSENT
RequestId = object  # any JSON value, or NO_ID


def _one_shot_encoder() -> Callable[[object], str]:
    """``json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode``, with its C
    encoder built once instead of on every call.

    ``encode`` builds the C encoder anew for each value: 6 us for a ping's reply
    (``{"return": {}}``), which is why the hot path's replies used to be
    concatenated by hand (0.45 us). Built once, the encoder takes 0.45 us for
    it too, and a 4 KiB read's reply with its base64 as fast as the hand-made
    one (timeit, best of 50 runs; ``benchmarks/ab.py`` rows unchanged), so every
    reply is encoded the one plain way.
    """
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (not CPython)
        return json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode
    # markers, default, string encoder, indent, separators, sort_keys, skipkeys,
    # allow_nan: JSONEncoder(ensure_ascii=True, allow_nan=False)'s, without the
    # circular check (replies are trees; RecursionError is handled by _encode).
    encoder = make(
        None,
        json.JSONEncoder().default,
        json.encoder.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        False,
        False,
        False,
    )
    return lambda value: "".join(encoder(value, 0))


_json_encode = _one_shot_encoder()
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


@dataclass(frozen=True, slots=True)
class ReturnReply:
    """A success reply: ``value`` for the request ``id``.

    ``delimited`` puts the 0xFF sentinel first, for ``guest-sync-delimited``.
    """

    value: object
    id: RequestId = NO_ID
    delimited: bool = False


@dataclass(frozen=True, slots=True)
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
    if type(value) is dict and any(type(v) is Base64Payload for v in value.values()):
        if any(_big(v) for v in value.values()):
            return _encode_around_payloads(value, reply.id)
        value = {key: _inline(item) for key, item in value.items()}  # a small read's
    return [encode_return(value, reply.id, delimited=reply.delimited)]


def _big(item: object) -> TypeGuard[Base64Payload]:
    return type(item) is Base64Payload and len(item.data) > INLINE_PAYLOAD


def _inline(item: object) -> object:
    """A small payload as the string it stands for; anything else as it is."""
    return pybase64.b64encode_as_string(item.data) if type(item) is Base64Payload else item


def _encode_around_payloads(value: dict[str, object], request_id: RequestId) -> list[bytes]:
    """The reply line of ``value`` cut around its big payloads, each of which is
    a piece of its own: sent as it is, never copied into the line."""
    parts: list[bytes] = []
    text = '{"return": {'
    for index, (key, item) in enumerate(value.items()):
        text += (", " if index else "") + _encode(key) + ": "
        if _big(item):
            parts += [(text + '"').encode("ascii"), pybase64.b64encode(item.data)]
            text = '"'
        else:
            text += _encode(_inline(item))
    text += "}"
    if request_id is not NO_ID:
        text += ', "id": ' + _encode(request_id)
    parts.append((text + "}\n").encode("ascii"))
    return parts


def encode_return(
    value: object, request_id: RequestId = NO_ID, *, delimited: bool = False
) -> bytes:
    """One success reply line, as qemu-ga lays it out (``return`` before ``id``).

    ``delimited`` puts the 0xFF sentinel first, for ``guest-sync-delimited``.
    """
    reply = {"return": value} if request_id is NO_ID else {"return": value, "id": request_id}
    line = (_encode(reply) + "\n").encode("ascii")
    return DELIMITER + line if delimited else line


def encode_error(error_class: str, desc: str, request_id: RequestId = NO_ID) -> bytes:
    """One error reply line (qemu-ga puts ``id`` first in error replies)."""
    reply: dict[str, object] = {}
    if request_id is not NO_ID:
        reply["id"] = request_id
    reply["error"] = {"class": error_class, "desc": desc}
    return (_encode(reply) + "\n").encode("ascii")
