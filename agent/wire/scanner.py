"""Incremental JSON lexer and grammar checker: the framer's slow path (sans-IO).

The framer (``agent.wire.framer``) decodes most requests with one call into the C
JSON decoder. Whatever that fast path cannot take whole -- a request split
over several reads, QEMU's single-quoted strings, or bad input -- goes through
this scanner, which looks at one token at a time (each token found by a regex,
so long strings cost one C call per read; a run of simple elements, such as
``0,1,"a",{"k":2},``, is one C call too) and knows at once when input can no
longer become valid JSON. That is what lets the agent answer ``{bad json`` at
once instead of waiting, as qemu-ga does, for braces that will never close.

Text given to the scanner is UTF-8 decoded with ``surrogateescape``: a 0xFF
byte arrives as U+DCFF and any other invalid byte as U+DC80..U+DCFE.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from agent.wire.delimiter import FLUSH_CHAR

_PLAIN = r"[^{q}\\\x00-\x1f\udc80-\udcff]*+"  # string characters that need no care
_ESCAPE = r"\\(?:[\"\\/bfnrt']|u[0-9a-fA-F]{{4}})"  # JSON's escapes, and QEMU's \'
_STR_BODY = f"{_PLAIN}(?:{_ESCAPE}{_PLAIN})*"
_BODY = {'"': re.compile(_STR_BODY.format(q='"')), "'": re.compile(_STR_BODY.format(q="'"))}
# An escape cut short by the end of the data read so far.
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z")
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PARTIAL_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?\Z")
_WORD = re.compile(r"[A-Za-z]+")
_PARTIAL_WORD = re.compile(r"[A-Za-z]+\Z")
_MAX_HELD = 1024  # longest token kept back, waiting for the rest of it
_STRAY = re.compile(r"[^ \t\n\r{}\[\]:,\"']{1,16}")
_KEYWORDS = frozenset(("true", "false", "null"))
# Runs of simple, complete array elements or object members, each followed by a
# comma, skipped in one C call instead of a Python step per token: a scalar
# (double-quoted string, number, keyword) or a flat container of scalars.
_JSON_WS = r"[ \t\n\r]*+"
# A run's strings are short: a longer one (a big write's base64) costs more to
# scan than a Python step, so it ends the run and goes to the token path, which
# finds its end at memchr speed. Unbounded, a run scanned all of a big write's
# first read at regex speed, and failed at its end, as the string went on: the
# framer spent 22 ms on a 1 MiB write whose first read was 1 MiB, 6.9 ms in
# reads of 128 and 88 KiB, against 1.5 ms with this bound (in-process, the
# agent's allocator settings, best of 3; qemu-ga's limits).
RUN_STRING_MAX = 256
_SHORT_PLAIN = rf'[^"\\\x00-\x1f\udc80-\udcff]{{0,{RUN_STRING_MAX}}}+'
_STRING = f'"{_SHORT_PLAIN}(?:{_ESCAPE.format()}{_SHORT_PLAIN})*+"'
_SCALAR = rf"(?:{_STRING}|-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?|true|false|null)"


def _member(value: str) -> str:
    return rf"{_STRING}{_JSON_WS}:{_JSON_WS}(?:{value})"


_FLAT = (
    rf"\[{_JSON_WS}(?:{_SCALAR}{_JSON_WS}(?:,{_JSON_WS}{_SCALAR}{_JSON_WS})*+)?\]"
    rf"|\{{{_JSON_WS}(?:{_member(_SCALAR)}{_JSON_WS}"
    rf"(?:,{_JSON_WS}{_member(_SCALAR)}{_JSON_WS})*+)?\}}"
)


# A text (one read) shorter than this goes token by token: runs save little
# there, and the first costs its pattern's compilation (5 ms, for a plugin's
# schema at start).
RUN_MIN_TEXT = 4096


@functools.cache
def _run(container: str, at_depth_limit: bool) -> re.Pattern[str]:
    """The run pattern inside ``container`` (``[`` or ``{``); with no room for
    one more level ``at_depth_limit``, of scalars only.

    Compiled on first use: these are the module's biggest patterns (7 ms of
    the agent's start-up), and only requests the C decoder cannot take whole
    come here.
    """
    value = _SCALAR if at_depth_limit else f"{_SCALAR}|{_FLAT}"
    if container == "[":
        return re.compile(rf"(?:(?:{value}){_JSON_WS},{_JSON_WS})*+")
    return re.compile(rf"(?:{_member(value)}{_JSON_WS},{_JSON_WS})*+")


# Recovery: what can end it or move its bracket count (runs of brackets in one step).
_RECOVERY_STOP = re.compile(r"[\n\udcff\"']|[{\[]+|[}\]]+")
_RECOVERY_STRING = {
    q: re.compile(rf"[^{q}\\\n\udcff]*+(?:\\[^\n\udcff][^{q}\\\n\udcff]*+)*+") for q in ('"', "'")
}
# Brackets and quotes a bad message's recovery follows; past them, it skips to the line end.
RECOVERY_BUDGET = 4096


# A byte that was not UTF-8, as surrogateescape decodes it: never sent back as
# such (a lone surrogate, which strict JSON parsers refuse) but as \xNN.
_BAD_BYTE = re.compile("[\udc80-\udcff]")


def _show_byte(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()) - 0xDC00:02x}"


class _Expect(enum.Enum):
    VALUE = enum.auto()  # a value (top level, after ':' or after ',' in an array)
    FIRST_ELEMENT = enum.auto()  # a value or ']'
    FIRST_KEY = enum.auto()  # a key or '}'
    KEY = enum.auto()  # a key, after ',' in an object
    COLON = enum.auto()
    SEPARATOR = enum.auto()  # ',' or the closing bracket


@dataclass(slots=True)
class Step:
    """What one call to :meth:`MessageScanner.scan` found in the text given."""

    end: int  # where scanning stopped in the text
    complete: bool = False  # a whole message ends at ``end``
    flush: bool = False  # a 0xFF byte was consumed just before ``end``
    error: str | None = None  # the message is invalid; the scanner now recovers
    hold: bool = False  # text from ``end`` on is an unfinished token: give it again
    requote: bool = False  # the finished message holds single-quoted strings


class MessageScanner:
    """Tracks one message's structure across reads, then recovers after errors.

    ``scan(text, pos)`` consumes text from ``pos`` and returns at the first
    event (a complete message, a flush, an error) or at the end of the text.
    The caller keeps the text itself; the scanner keeps only the state. A
    token cut by the end of the text (``Step.hold``) is not consumed: the
    caller puts it back in front of the next text.
    """

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self._stack: list[str] = []
        self._expect = _Expect.VALUE
        self._in_string = ""  # the open quote while inside a string
        self._string_is_key = False
        self._requote = False
        self._recovering = False
        self._recovery_depth = 0
        self._recovery_at_top = False
        self._recovery_budget = RECOVERY_BUDGET
        self._recovery_escape = False  # in a string, the last read ended with a backslash

    @property
    def idle(self) -> bool:
        """True between messages: nothing partial is held."""
        return (
            not self._recovering
            and not self._stack
            and not self._in_string
            and self._expect is _Expect.VALUE
        )

    @property
    def recovering(self) -> bool:
        """True while skipping the rest of a bad message."""
        return self._recovering

    def reset(self) -> None:
        self.__init__(self.max_depth)  # type: ignore[misc]

    def scan(self, text: str, pos: int) -> Step:
        if self._recovering:
            return self._recover(text, pos)
        return self._scan(text, pos)

    def start_recovery(self) -> None:
        """Drop the current message (e.g. it is too big) and skip to a resync point."""
        self._enter_recovery()

    # ------------------------------------------------------------ grammar --
    def _scan(self, text: str, pos: int) -> Step:
        n = len(text)
        while True:
            if self._in_string:
                step = self._scan_string(text, pos)
                if step.error is not None or step.flush or self._in_string:
                    return step
                pos = step.end
                if self._string_is_key:
                    self._expect = _Expect.COLON
                elif self._value_done():
                    return Step(pos, complete=True, requote=self._take_requote())
                continue
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return Step(pos)
            c = text[pos]
            if c == FLUSH_CHAR:
                self.reset()
                return Step(pos + 1, flush=True)
            expect = self._expect
            if n >= RUN_MIN_TEXT and self._stack and expect in _RUN_STATES[self._stack[-1]]:
                run = _run(self._stack[-1], len(self._stack) >= self.max_depth)
                end = run.match(text, pos).end()  # type: ignore[union-attr]
                if end > pos:
                    pos = end
                    self._expect = _Expect.VALUE if self._stack[-1] == "[" else _Expect.KEY
                    continue
            if c == '"' or c == "'":
                if expect is _Expect.COLON:
                    return self._fail(pos, "missing : in object pair")
                if expect is _Expect.SEPARATOR:
                    return self._fail(pos, self._separator_error())
                if c == "'":
                    self._requote = True
                self._in_string = c
                self._string_is_key = expect in _KEY_STATES
                pos += 1
                continue
            if c in "{[":
                if expect not in _VALUE_STATES:
                    return self._fail(
                        pos, self._unexpected(expect, "key is not a string in object")
                    )
                if len(self._stack) >= self.max_depth:
                    return self._fail(pos, "JSON nesting depth limit exceeded", prefixed=False)
                self._stack.append(c)
                self._expect = _Expect.FIRST_KEY if c == "{" else _Expect.FIRST_ELEMENT
                pos += 1
                continue
            if c in "}]":
                top = self._stack[-1] if self._stack else ""
                closes = (c == "}" and top == "{") or (c == "]" and top == "[")
                if not closes or expect not in _CLOSE_STATES[c]:
                    return self._fail(pos, self._unexpected(expect, "expecting value"))
                self._stack.pop()
                pos += 1
                if self._value_done():
                    return Step(pos, complete=True, requote=self._take_requote())
                continue
            if c == ":":
                if expect is not _Expect.COLON:
                    return self._fail(pos, self._unexpected(expect, "expecting value"))
                self._expect = _Expect.VALUE
                pos += 1
                continue
            if c == ",":
                if expect is not _Expect.SEPARATOR:
                    return self._fail(pos, self._unexpected(expect, "expecting value"))
                self._expect = _Expect.KEY if self._stack[-1] == "{" else _Expect.VALUE
                pos += 1
                continue
            step_or_pos = self._scan_scalar(text, pos, expect)
            if isinstance(step_or_pos, Step):
                return step_or_pos
            pos = step_or_pos
            if self._value_done():
                return Step(pos, complete=True, requote=self._take_requote())

    def _scan_scalar(self, text: str, pos: int, expect: _Expect) -> Step | int:
        """A number or keyword at ``pos``; returns the position after it."""
        n = len(text)
        if n - pos < _MAX_HELD and (
            _PARTIAL_NUMBER.match(text, pos) or _PARTIAL_WORD.match(text, pos)
        ):
            return Step(pos, hold=True)  # the token may go on in the next read
        word = _WORD.match(text, pos)
        number = None if word else _NUMBER.match(text, pos)
        token = word or number
        if token is None:
            stray = _STRAY.match(text, pos)
            return self._fail(pos, f"stray '{stray.group() if stray else text[pos]}'")
        end = token.end()
        if word and word.group() not in _KEYWORDS:
            return self._fail(pos, f"invalid keyword '{word.group()[:32]}'")
        if end == n:
            return self._fail(pos, "number too long")
        if number and (text[end] in ".eE" or text[end].isalnum()):
            stray = _STRAY.match(text, pos)
            return self._fail(pos, f"stray '{stray.group() if stray else text[pos:end]}'")
        if expect in _KEY_STATES:
            return self._fail(pos, "key is not a string in object")
        if expect not in _VALUE_STATES:
            return self._fail(pos, self._unexpected(expect, "expecting value"))
        return end

    def _scan_string(self, text: str, pos: int) -> Step:
        quote = self._in_string
        n = len(text)
        if text.isascii():  # O(1); then a run with no escape or newline needs no regex
            close = text.find(quote, pos)
            stop = n if close < 0 else close
            if text.find("\\", pos, stop) < 0 and text.find("\n", pos, stop) < 0:
                # Other control characters are left to the decoder at the end.
                if close < 0:
                    return Step(n)
                self._in_string = ""
                return Step(close + 1)
        end = _BODY[quote].match(text, pos).end()  # type: ignore[union-attr]
        if end >= n:
            return Step(n)
        c = text[end]
        if c == quote:
            self._in_string = ""
            return Step(end + 1)
        if c == "\\":
            if _PARTIAL_ESCAPE.match(text, end):
                return Step(end, hold=True)
            return self._fail(end, f"invalid escape '{text[end : end + 2]}'")
        if c == FLUSH_CHAR:
            self.reset()
            return Step(end + 1, flush=True)
        if "\udc80" <= c <= "\udcfe":
            return self._fail(end, "invalid UTF-8 sequence in string")
        return self._fail(end, f"invalid character U+{ord(c):04X} in string")

    def _value_done(self) -> bool:
        """After a value: either the message is complete or a separator follows."""
        if self._stack:
            self._expect = _Expect.SEPARATOR
            return False
        self._expect = _Expect.VALUE
        return True

    def _take_requote(self) -> bool:
        requote, self._requote = self._requote, False
        return requote

    def _separator_error(self) -> str:
        if self._stack[-1] == "{":
            return "expected ',' or '}' after an object member"
        return "expected ',' or ']' after an array element"

    def _unexpected(self, expect: _Expect, default: str) -> str:
        if expect is _Expect.COLON:
            return "missing : in object pair"
        if expect is _Expect.SEPARATOR:
            return self._separator_error()
        return default

    def _fail(self, pos: int, reason: str, *, prefixed: bool = True) -> Step:
        self._enter_recovery()
        reason = _BAD_BYTE.sub(_show_byte, reason)
        return Step(pos, error=f"JSON parse error, {reason}" if prefixed else reason)

    # ----------------------------------------------------------- recovery --
    def _enter_recovery(self) -> None:
        """Skip what is left of a bad message.

        Inside a message, recovery ends when its brackets close, at a newline
        or at 0xFF. Between messages (junk such as ``garbage``) it ends at a
        newline, 0xFF or the ``{`` of the next message. Following the brackets
        costs a Python step per string or run of brackets, so it has a budget
        (``RECOVERY_BUDGET`` brackets and quotes): past it, the rest of the
        message is skipped to the next newline or 0xFF at memchr speed.
        """
        depth = len(self._stack)
        in_string = self._in_string
        self.reset()
        self._recovering = True
        self._recovery_depth = depth
        self._recovery_at_top = depth == 0
        self._in_string = in_string

    def _recover(self, text: str, pos: int) -> Step:
        n = len(text)
        while pos < n:
            if self._recovery_budget <= 0:
                return self._skip_line(text, pos)
            if self._in_string:
                if self._recovery_escape and text[pos] not in "\n" + FLUSH_CHAR:
                    pos += 1  # escaped by the backslash that ended the last read
                self._recovery_escape = False
                end = _RECOVERY_STRING[self._in_string].match(text, pos).end()  # type: ignore[union-attr]
                if end >= n:
                    return Step(n)
                if text[end] == "\\":  # before a newline or 0xFF, or ending the text
                    if end + 1 == n:
                        self._recovery_escape = True
                        return Step(n)
                    end += 1
                self._in_string = ""
                if text[end] in "\"'":
                    pos = end + 1
                    continue
                pos = end  # a newline or 0xFF: handled below
            found = _RECOVERY_STOP.search(text, pos)
            if found is None:
                return Step(n)
            pos = found.start()
            token = found.group()
            c = token[0]
            if c == "\n":
                self.reset()
                return Step(pos + 1)
            if c == FLUSH_CHAR:
                self.reset()
                return Step(pos + 1, flush=True)
            # Counted per character, so that the budget runs out at the same
            # place however the input is split into reads.
            count = min(len(token), self._recovery_budget)
            self._recovery_budget -= count
            if c in "\"'":
                self._in_string = c
            elif c in "{[":
                if self._recovery_at_top and "{" in token[:count]:
                    self.reset()
                    return Step(pos + token.index("{"))
                self._recovery_depth += count
            elif self._recovery_at_top or self._recovery_depth > count:
                self._recovery_depth = max(0, self._recovery_depth - count)
            else:
                end = pos + self._recovery_depth
                self.reset()
                return Step(end)
            pos += count
        return Step(n)

    def _skip_line(self, text: str, pos: int) -> Step:
        """Past the budget: on to the next newline or 0xFF, at memchr speed."""
        newline = text.find("\n", pos)
        flush = text.find(FLUSH_CHAR, pos, None if newline < 0 else newline)
        if flush >= 0:
            self.reset()
            return Step(flush + 1, flush=True)
        if newline >= 0:
            self.reset()
            return Step(newline + 1)
        return Step(len(text))


_VALUE_STATES = frozenset((_Expect.VALUE, _Expect.FIRST_ELEMENT))
_RUN_STATES = {"[": _VALUE_STATES, "{": frozenset((_Expect.FIRST_KEY, _Expect.KEY))}
_KEY_STATES = frozenset((_Expect.FIRST_KEY, _Expect.KEY))
_CLOSE_STATES = {
    "}": frozenset((_Expect.FIRST_KEY, _Expect.SEPARATOR)),
    "]": frozenset((_Expect.FIRST_ELEMENT, _Expect.SEPARATOR)),
}


_REQUOTE_TOKEN = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\"']+")
_SQ_PIECE = re.compile(r"\\'|\\.|\"|[^\\\"]+")


def requote(text: str) -> str:
    """Rewrite QEMU's single-quoted strings and ``\\'`` escapes as plain JSON.

    Only called on text the scanner has already accepted, so every string in
    it is well formed. Plain JSON comes back unchanged.
    """
    out: list[str] = []
    for token in _REQUOTE_TOKEN.findall(text):
        if token[0] in "\"'":
            body = token[1:-1]
            pieces = (
                "'" if p == "\\'" else '\\"' if p == '"' else p for p in _SQ_PIECE.findall(body)
            )
            out.append('"' + "".join(pieces) + '"')
        else:
            out.append(token)
    return "".join(out)
