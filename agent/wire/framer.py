"""Bytes in, events out (sans-IO): the request framer of the wire protocol.

This module knows bytes and JSON, never commands, and imports no I/O library.

Framing follows QEMU's JSON streamer: requests are split by JSON structure,
not by newline, so several may come in one read and one may span many. A
0xFF byte (never valid UTF-8, so never inside valid JSON) discards any partial
request. Messages are capped in size and nesting (the agent's caps are
qemu-ga's, set in ``agent.core.config``). Unlike qemu-ga, input that can no
longer become valid JSON is reported at once, and the framer resynchronises
at the next newline or 0xFF (see ``agent.wire.scanner``).
"""

from __future__ import annotations

import codecs
import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from agent.wire.scanner import FLUSH_CHAR, MessageScanner, requote

DELIMITER = b"\xff"


@dataclass(frozen=True, slots=True)
class Message:
    """A complete JSON value read from the stream (any type: the framer does not judge)."""

    value: object


@dataclass(frozen=True, slots=True)
class ParseError:
    """Input that is not valid JSON; ``reason`` is the error text for the reply."""

    reason: str


@dataclass(frozen=True, slots=True)
class Flush:
    """A 0xFF byte: any partial request was discarded."""


Event = Message | ParseError | Flush


class _Rejected(ValueError):
    """Valid JSON syntax that QEMU's parser refuses all the same."""


def _pairs_to_dict(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Rejected("JSON parse error, duplicate key")
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Rejected("JSON parse error, number out of range")
    return value


def _reject_constant(name: str) -> object:
    raise _Rejected(f"JSON parse error, invalid keyword '{name}'")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_to_dict, parse_float=_finite_float, parse_constant=_reject_constant
)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SURROGATE_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, 0xFF included
_SURROGATE_ESCAPE_HINT = re.compile(r"\\u[dD][89a-fA-F]")


class Framer:
    """Turns the bytes of one connection into :data:`Event` objects.

    Feed it with :meth:`receive`; use a new framer (or :meth:`reset`) for
    every connection, so a client never inherits another's partial request.

    A request is decoded one of three ways, each kept because it pays
    (``benchmarks/ab.py --base fbd476c``, 5 alternating rounds, with the path
    taken out, on a busy 2-core machine):

    1. A read that is one whole request, the usual host's (it waits for each
       reply), goes to the C decoder at once, without the event generator
       (:meth:`receive`). Without it, ping p50 1.06x (0.95-1.10) and the
       agent's CPU per MiB of 4 KiB reads 1.05x (1.02-1.16).
    2. Each whole plain-JSON request at a request boundary goes to the C
       decoder too (:meth:`_decode_whole` in :meth:`_events`): requests sent
       back to back. Without 1 and 2, everything through the scanner: ping
       p50 1.33x, pipelined pings 0.38x, CPU per MiB of 4 KiB reads 1.26x.
    3. Everything else goes through the scanner (``agent.wire.scanner``) and
       :meth:`_decode_slow`: requests split over reads (big file writes,
       whose CPU per MiB the fast paths do not change), QEMU's single
       quotes, invalid input and its resynchronisation, nesting deeper than
       the interpreter's recursion limit (``agent.wire.deep_json``).
    """

    def __init__(self, *, max_size: int, max_depth: int) -> None:
        """``max_size`` and ``max_depth`` cap a message's bytes and nesting (the
        agent's are qemu-ga's: ``agent.core.config``)."""
        self.max_size = max_size
        self.max_depth = max_depth
        self._utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._scanner = MessageScanner(max_depth)
        self._parts: list[str] = []  # the partial message, as read so far
        self._size = 0
        self._carry = ""  # an unfinished token, scanned again with the next read

    def reset(self) -> None:
        self.__init__(max_size=self.max_size, max_depth=self.max_depth)  # type: ignore[misc]

    @property
    def idle(self) -> bool:
        """True when no partial message is held."""
        return self._scanner.idle and not self._parts and not self._carry

    def receive(self, data: bytes | bytearray) -> list[Event]:
        """Consume ``data``; return the events it completes, in order."""
        if data.isascii() and not self._utf8.getstate()[0]:
            text = data.decode("ascii")  # the common case, and the fastest decoder
        else:
            text = self._utf8.decode(data)
        if self._carry:
            text, self._carry = self._carry + text, ""
        elif text[:1] == "{" and self.idle:
            # The usual read: one whole request, perhaps with more after it.
            whole = self._decode_whole(text, 0)
            if whole is None:  # not whole: straight to the scanner, no second try
                return list(self._events(text, 0, tried=0))
            value, end = whole
            if end == len(text) or text[end:] == "\n":
                return [Message(value)]
            return [Message(value), *self._events(text, end)]
        return list(self._events(text, 0))

    def _events(self, text: str, pos: int, tried: int = -1) -> Iterator[Event]:
        """Events from ``text[pos:]``; ``tried`` is where the fast path already failed."""
        n = len(text)
        scanner = self._scanner
        while pos < n:
            if scanner.idle and not self._parts:
                pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    return
                if text[pos] == FLUSH_CHAR:
                    pos += 1
                    yield Flush()
                    continue
                if text[pos] == "{" and pos != tried:
                    fast = self._decode_whole(text, pos)
                    if fast is not None:
                        yield Message(fast[0])
                        pos = fast[1]
                        continue
            start = pos
            keep = not scanner.recovering
            step = scanner.scan(text, pos)
            pos = step.end
            if step.hold:
                self._carry = text[pos:]
            if step.error is not None:
                self._drop()
                yield ParseError(step.error)
                continue
            if step.flush:
                self._drop()
                yield Flush()
                continue
            if not keep:
                continue
            if not self._keep(text[start:pos]):
                scanner.start_recovery()
                yield ParseError("JSON token size limit exceeded")
                continue
            if step.complete:
                message = "".join(self._parts)
                self._drop()
                yield self._decode_slow(message, step.requote)
            if step.hold:
                return

    def _keep(self, piece: str) -> bool:
        """Add scanned text to the partial message; False when it grows too big."""
        self._size += len(piece)
        if self._size > self.max_size:
            self._drop()
            return False
        if piece:
            self._parts.append(piece)
        return True

    def _drop(self) -> None:
        self._parts = []
        self._size = 0

    def _decode_whole(self, text: str, pos: int) -> tuple[object, int] | None:
        """The fast path: a whole, plain-JSON object at ``pos``, or None.

        None sends the input through the scanner, which handles everything the
        C decoder cannot take whole (partial input, QEMU's quoting, errors).
        Text with no "}" after ``pos`` holds no whole object: the first read of
        a big write, which the decoder would otherwise scan to its end for
        nothing (a memchr finds that out).
        """
        if text.find("}", pos) < 0:
            return None
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return None
        if end - pos > self.max_size:
            return None
        message = text[pos:end]
        if not message.isascii() and _SURROGATE_ESCAPED.search(message):
            return None
        if self.max_depth < sys.getrecursionlimit() // 2 and (
            message.count("{") + message.count("[") > self.max_depth
        ):
            return None
        if (
            "\\" in message
            and _SURROGATE_ESCAPE_HINT.search(message)
            and _has_lone_surrogate(value)
        ):
            return None
        return value, end

    def _decode_slow(self, message: str, requoted: bool) -> Event:
        escapes = "\\" in message  # one memchr: big base64 strings have no backslash
        if requoted or (escapes and "\\'" in message):
            message = requote(message)
        try:
            value = _decode_any_depth(message)
        except _Rejected as err:
            return ParseError(str(err))
        except json.JSONDecodeError as err:
            # The scanner leaves control characters in long plain strings to
            # the decoder; nothing else it accepts should fail here.
            if err.msg.startswith("Invalid control character"):
                return ParseError(
                    f"JSON parse error, invalid character U+{ord(message[err.pos]):04X} in string"
                )
            return ParseError(f"JSON parse error, {err.msg.lower()}")
        if escapes and _SURROGATE_ESCAPE_HINT.search(message) and _has_lone_surrogate(value):
            return ParseError("JSON parse error, \\u escape is a lone surrogate")
        return Message(value)


def _decode_any_depth(message: str) -> object:
    """``message`` decoded, however deep it is nested (up to the framer's limit)."""
    try:
        return _DECODER.decode(message)
    except RecursionError:
        from agent.wire import deep_json  # rare: not imported before it is needed

        return deep_json.decode(
            message,
            object_pairs_hook=_pairs_to_dict,
            parse_float=_finite_float,
            parse_constant=_reject_constant,
        )


def _has_lone_surrogate(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
