"""JSON for values nested deeper than the C codec of ``json`` can take.

The stdlib's C decoder and encoder recurse once per level of nesting, under
Python's recursion limit (1000 by default, counted from wherever they are
called). QEMU accepts requests nested up to 1024 levels, and a request's
``id`` of any shape is echoed in its reply, so the agent must decode and
encode such values. Raising ``sys.setrecursionlimit`` for them would change
process-wide state behind an embedding program's back; these two functions
use a stack of their own instead and touch nothing global.

They give the same results as the stdlib with the options the protocol uses
(``protocol._DECODER`` and ``protocol._encode``) and are only called when the
C codec raised ``RecursionError``: they are not fast, and need not be.
"""

from __future__ import annotations

import json
import json.decoder
import json.encoder
import json.scanner
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = json.scanner.NUMBER_RE
# The decoder's C string scanner (typeshed does not declare it): (text, index
# after the opening quote, strict) -> (the string, index after its closing quote).
_scanstring: Callable[[str, int, bool], tuple[str, int]] = vars(json.decoder)["scanstring"]
_LITERALS: dict[str, object] = {"null": None, "true": True, "false": False}
_CONSTANTS = ("NaN", "Infinity", "-Infinity")


@dataclass
class _Array:
    items: list[object] = field(default_factory=list)


@dataclass
class _Object:
    key: str
    pairs: list[tuple[str, object]] = field(default_factory=list)


def decode(
    text: str,
    *,
    object_pairs_hook: Callable[[list[tuple[str, object]]], object],
    parse_float: Callable[[str], object],
    parse_constant: Callable[[str], object],
) -> object:
    """``text`` decoded as one JSON value (whitespace around it allowed).

    Errors are ``json.JSONDecodeError`` with the stdlib's messages, or what the
    hooks raise.
    """
    stack: list[_Array | _Object] = []
    pos = _skip(text, 0)
    while True:
        # A value starts at pos: a scalar, or a container opened on the stack.
        char = text[pos : pos + 1]
        if char == "{":
            pos = _skip(text, pos + 1)
            if text.startswith("}", pos):
                value, pos = object_pairs_hook([]), pos + 1
            else:
                key, pos = _member_key(text, pos)
                stack.append(_Object(key))
                continue
        elif char == "[":
            pos = _skip(text, pos + 1)
            if text.startswith("]", pos):
                value, pos = [], pos + 1
            else:
                stack.append(_Array())
                continue
        else:
            value, pos = _scalar(text, pos, parse_float, parse_constant)
        # The value is whole: give it to its container, closing those that end.
        while True:
            pos = _skip(text, pos)
            if not stack:
                if pos != len(text):
                    raise json.JSONDecodeError("Extra data", text, pos)
                return value
            top = stack[-1]
            if isinstance(top, _Array):
                top.items.append(value)
                closing = "]"
            else:
                top.pairs.append((top.key, value))
                closing = "}"
            char = text[pos : pos + 1]
            if char == ",":
                pos = _skip(text, pos + 1)
                if isinstance(top, _Object):
                    top.key, pos = _member_key(text, pos)
                break
            if char != closing:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos += 1
            stack.pop()
            value = top.items if isinstance(top, _Array) else object_pairs_hook(top.pairs)


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _member_key(text: str, pos: int) -> tuple[str, int]:
    """An object member's key and the position of its value."""
    if not text.startswith('"', pos):
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
    key, pos = _scanstring(text, pos + 1, True)
    pos = _skip(text, pos)
    if not text.startswith(":", pos):
        raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
    return key, _skip(text, pos + 1)


def _scalar(
    text: str,
    pos: int,
    parse_float: Callable[[str], object],
    parse_constant: Callable[[str], object],
) -> tuple[object, int]:
    if text.startswith('"', pos):
        return _scanstring(text, pos + 1, True)
    for name, literal in _LITERALS.items():
        if text.startswith(name, pos):
            return literal, pos + len(name)
    for name in _CONSTANTS:
        if text.startswith(name, pos):
            return parse_constant(name), pos + len(name)
    match = _NUMBER.match(text, pos)
    if match is None:
        raise json.JSONDecodeError("Expecting value", text, pos)
    integer, fraction, exponent = match.groups()
    if fraction or exponent:
        return parse_float(integer + (fraction or "") + (exponent or "")), match.end()
    return int(integer), match.end()


_SURROGATE = re.compile("[\ud800-\udfff]")
_encode_string = json.encoder.encode_basestring_ascii


def encode(value: object) -> str:
    """``value`` as JSON text: ASCII only, no NaN or infinity, ``", "`` and ``": "``
    between items, and lone surrogates in strings written as U+FFFD."""
    parts: list[str] = []
    # Each open container: its items still to write, its closing bracket, and
    # whether an item was written yet.
    stack: list[tuple[Iterator[object], str, list[bool]]] = []
    while True:
        if isinstance(value, dict):
            if value:
                parts.append("{")
                stack.append((iter(value.items()), "}", [False]))
            else:
                parts.append("{}")
        elif isinstance(value, list | tuple):
            if value:
                parts.append("[")
                stack.append((iter(value), "]", [False]))
            else:
                parts.append("[]")
        else:
            parts.append(_encode_scalar(value))
        while stack:
            items, closing, started = stack[-1]
            item = next(items, _END)
            if item is _END:
                parts.append(closing)
                stack.pop()
                continue
            if started[0]:
                parts.append(", ")
            started[0] = True
            if closing == "}":
                key, value = cast(tuple[object, object], item)
                parts.append(_encode_key(key) + ": ")
            else:
                value = item
            break
        else:
            return "".join(parts)


_END = object()


def _encode_scalar(value: object) -> str:
    if isinstance(value, str):
        return _encode_string(_SURROGATE.sub("\ufffd", value))
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        return float.__repr__(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encode_key(key: object) -> str:
    if isinstance(key, str):
        return _encode_scalar(key)
    if key is None or isinstance(key, bool | int | float):
        return '"' + _encode_scalar(key) + '"'
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")
