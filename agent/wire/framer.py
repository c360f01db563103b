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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from agent.wire.delimiter import DELIMITER, FLUSH_CHAR

if TYPE_CHECKING:
    from agent.wire.scanner import MessageScanner

__all__ = ["DELIMITER", "Event", "Flush", "Framer", "Message", "ParseError"]


@dataclass(slots=True)
class Message:
    """A complete JSON value read from the stream (any type: the framer does not judge).

    Not frozen, as the rarer events are: one is built for every request, and a
    frozen dataclass costs twice as much to build (317 against 178 ns).
    """

    value: object


class ParseError(NamedTuple):
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
# The C scanner itself (JSONDecoder.raw_decode without its Python frame):
# StopIteration where nothing decodes at the position. The decoder sets it in
# its __init__; typeshed does not list it.
_SCAN_ONCE: Callable[[str, int], tuple[object, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SURROGATE_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, 0xFF included
_SURROGATE_ESCAPE_HINT = re.compile(r"\\u[dD][89a-fA-F]")


class Framer:
    """Turns the bytes of one connection into :data:`Event` objects.

    Feed it with :meth:`receive`; use a new framer (or :meth:`reset`) for
    every connection, so a client never inherits another's partial request.

    A request is decoded one of two ways:

    1. Each whole plain-JSON request at a request boundary goes to the C
       decoder at once (:meth:`_whole_requests`, with what holds for the whole
       read found out once: :class:`_Whole`): a read that is one request, the
       usual host's (it waits for each reply), and requests sent back to back.
       Taken out (``benchmarks/ab.py --base fbd476c``, 5 alternating rounds,
       busy 2-core machine), everything through the scanner: ping p50 1.33x,
       pipelined pings 0.38x, CPU per MiB of 4 KiB reads 1.26x. Written as
       one loop over the read, with the C scanner called directly and the
       read's facts found once, it costs 6.4 us of CPU per pipelined ping
       where the generator of events with a check of each request's own text
       cost 7.8 (``benchmarks/bench_request_path.py``, best of 10 rounds).
    2. Everything else goes through the scanner (``agent.wire.scanner``) and
       :meth:`_decode_slow`: requests split over reads (big file writes,
       whose CPU per MiB the fast path does not change), QEMU's single
       quotes, invalid input and its resynchronisation, nesting deeper than
       the interpreter's recursion limit (``agent.wire.deep_json``).
    """

    def __init__(self, *, max_size: int, max_depth: int) -> None:
        """``max_size`` and ``max_depth`` cap a message's bytes and nesting (the
        agent's are qemu-ga's: ``agent.core.config``)."""
        self.max_size = max_size
        self.max_depth = max_depth
        self._utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        # Made by the first input the fast path cannot take (see _scan): a host
        # that only sends whole, plain requests never loads the scanner.
        self._scanner: MessageScanner | None = None
        self._parts: list[str] = []  # the partial message, as read so far
        self._size = 0
        self._carry = ""  # an unfinished token, scanned again with the next read

    def reset(self) -> None:
        self.__init__(max_size=self.max_size, max_depth=self.max_depth)  # type: ignore[misc]

    @property
    def idle(self) -> bool:
        """True when no partial message is held."""
        scanner = self._scanner
        return (scanner is None or scanner.idle) and not self._parts and not self._carry

    def receive(self, data: bytes | bytearray) -> list[Event]:
        """Consume ``data``; return the events it completes, in order."""
        if data.isascii() and not self._utf8.getstate()[0]:
            text = data.decode("ascii")  # the common case, and the fastest decoder
        else:
            text = self._utf8.decode(data)
        if self._carry:
            text, self._carry = self._carry + text, ""
        events: list[Event] = []
        n = len(text)
        pos = 0
        whole = None  # made at the first request boundary: not in a big write's reads
        while pos < n:
            scanner = self._scanner
            if (scanner is None or scanner.idle) and not self._parts:
                if whole is None:
                    whole = _Whole(text, self.max_size, self.max_depth)
                pos = self._whole_requests(text, pos, whole, events)
                if pos >= n:
                    break
            pos = self._scan(text, pos, events)
        return events

    @staticmethod
    def _whole_requests(text: str, pos: int, whole: _Whole, events: list[Event]) -> int:
        """Between requests: the fast path. Each whole request from ``pos`` on
        (and each 0xFF between them) added to ``events``; where the first one
        the C decoder cannot take starts (the scanner's to take), or the end."""
        n = len(text)
        while pos < n:
            char = text[pos]
            if char == "\n":  # the newline after most requests
                pos += 1
                if pos == n:
                    break
                char = text[pos]
            if char != "{":
                pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                char = text[pos]
                if char == FLUSH_CHAR:
                    pos += 1
                    events.append(Flush())
                    continue
                if char != "{":
                    break
            decoded = whole.decode(pos)
            if decoded is None:
                break
            events.append(Message(decoded[0]))
            pos = decoded[1]
        return pos

    def _scan(self, text: str, pos: int, events: list[Event]) -> int:
        """One step of the scanner from ``pos``: its event, if any, added to
        ``events``; where the next step starts (the end of ``text`` when the
        rest is an unfinished token, kept for the next read)."""
        scanner = self._scanner
        if scanner is None:
            from agent.wire.scanner import MessageScanner  # compiles its patterns

            scanner = self._scanner = MessageScanner(self.max_depth)
        start = pos
        keep = not scanner.recovering
        step = scanner.scan(text, pos)
        pos = step.end
        if step.hold:
            self._carry = text[pos:]
        if step.error is not None:
            self._drop()
            events.append(ParseError(step.error))
            return pos
        if step.flush:
            self._drop()
            events.append(Flush())
            return pos
        if not keep:
            return pos
        if not self._keep(text[start:pos]):
            scanner.start_recovery()
            events.append(ParseError("JSON token size limit exceeded"))
            return pos
        if step.complete:
            message = "".join(self._parts)
            self._drop()
            events.append(self._decode_slow(message, step.requote))
        return len(text) if step.hold else pos

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

    def _decode_slow(self, message: str, requoted: bool) -> Event:
        escapes = "\\" in message  # one memchr: big base64 strings have no backslash
        if requoted or (escapes and "\\'" in message):
            from agent.wire.scanner import requote

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


class _Whole:
    """The fast path's decoder for one read: whole, plain-JSON objects at request
    boundaries, straight from the C decoder.

    What holds for the whole read is found out once, not for each request:
    where its last "}" is (no whole object starts after it: the first read of
    a big write holds none, and the decoder would scan it to its end for
    nothing), and whether it is ASCII without a backslash (then no request in
    it can hold an undecodable byte or a lone surrogate escape).
    """

    __slots__ = ("_last_close", "_max_depth", "_max_size", "_plain", "_text")

    def __init__(self, text: str, max_size: int, max_depth: int) -> None:
        self._text = text
        self._max_size = max_size
        self._max_depth = max_depth
        self._last_close = text.rfind("}")
        self._plain = text.isascii() and "\\" not in text

    def decode(self, pos: int) -> tuple[object, int] | None:
        """The object at ``pos`` and where it ends, or None: then the input goes
        through the scanner, which handles everything the C decoder cannot
        take whole (partial input, QEMU's quoting, errors, caps)."""
        if pos >= self._last_close:
            return None
        text = self._text
        try:
            value, end = _SCAN_ONCE(text, pos)
        except (StopIteration, ValueError, RecursionError):
            return None
        size = end - pos
        if size > self._max_size:
            return None
        if not self._plain:
            message = text[pos:end]
            if not message.isascii() and _SURROGATE_ESCAPED.search(message):
                return None
            if (
                "\\" in message
                and _SURROGATE_ESCAPE_HINT.search(message)
                and _has_lone_surrogate(value)
            ):
                return None
        # Only a message longer than the cap can nest deeper than it.
        if (
            size > self._max_depth
            and self._max_depth < sys.getrecursionlimit() // 2
            and text.count("{", pos, end) + text.count("[", pos, end) > self._max_depth
        ):
            return None
        return value, end


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
