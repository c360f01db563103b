"""The stack-based JSON codec for values too deep for the stdlib's C codec."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.config import MAX_DEPTH, MAX_MESSAGE_SIZE
from agent.wire import deep_json
from agent.wire.encoder import encode_return
from agent.wire.framer import Framer, Message

STDLIB_ENCODE = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode
HOOKS: dict[str, Any] = {
    "object_pairs_hook": dict,
    "parse_float": float,
    "parse_constant": lambda name: f"constant {name}",
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), children, max_size=4)
    ),
    max_leaves=20,
)


def nested(depth: int) -> object:
    value: object = "core"
    for level in range(depth):
        value = [value, level] if level % 2 else {"level": level, "inner": value}
    return value


@given(json_values)
def test_encodes_as_the_stdlib(value: object) -> None:
    assert deep_json.encode(value) == STDLIB_ENCODE(value)


@given(json_values, st.sampled_from(["", " ", "\n\t "]))
def test_decodes_as_the_stdlib(value: object, space: str) -> None:
    text = json.dumps(value, indent=1 if space else None)
    text = space + text + space
    assert deep_json.decode(text, **HOOKS) == json.JSONDecoder(**HOOKS).decode(text)


@pytest.mark.parametrize(
    "text",
    ["", "[1,]", "[1 2]", '{"a" 1}', "{1: 2}", '{"a": 1,}', "[1] x", "tru", "01", "[", '"\x01"'],
)
def test_refuses_what_the_stdlib_refuses_with_its_message(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as stdlib:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as ours:
        deep_json.decode(text, **HOOKS)
    assert ours.value.msg == stdlib.value.msg


def test_constants_and_floats_go_through_the_hooks() -> None:
    text = "[NaN, Infinity, -Infinity, 1.5, 2e3, -7]"
    assert deep_json.decode(text, **HOOKS) == json.JSONDecoder(**HOOKS).decode(text)


def test_lone_surrogates_go_out_as_replacement_characters() -> None:
    assert deep_json.encode(["a\udcff", {"\ud800": "\U0001f600"}]) == (
        '["a\\ufffd", {"\\ufffd": "\\ud83d\\ude00"}]'
    )


def test_refuses_what_the_stdlib_cannot_encode() -> None:
    with pytest.raises(ValueError, match="Out of range"):
        deep_json.encode([float("nan")])
    with pytest.raises(TypeError, match="not JSON serializable"):
        deep_json.encode({"a": object()})


def test_values_deeper_than_the_recursion_limit_without_touching_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(limit: int) -> None:
        raise AssertionError("the recursion limit is process-wide state")

    monkeypatch.setattr(sys, "setrecursionlimit", forbidden)
    depth = 3 * sys.getrecursionlimit()
    value = nested(depth)
    with pytest.raises(RecursionError):
        json.dumps(value)
    text = deep_json.encode(value)
    assert text.startswith('[{"level": ' + str(depth - 2) + ', "inner": [{"level": ')
    assert text.endswith(f", {depth - 1}]")
    assert text.count('"core"') == 1
    # Comparing the values would recurse too: the text round trip stands for it.
    assert deep_json.encode(deep_json.decode(text, **HOOKS)) == text


def test_the_protocol_echoes_an_id_at_qemus_nesting_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """1024 levels, as QEMU allows: decoded and echoed, the recursion limit untouched."""

    def forbidden(limit: int) -> None:
        raise AssertionError("the recursion limit is process-wide state")

    monkeypatch.setattr(sys, "setrecursionlimit", forbidden)
    request_id = "[" * 1022 + "7" + "]" * 1022
    request = f'{{"execute": "guest-ping", "id": {request_id}}}'.encode()
    with pytest.raises(RecursionError):  # too deep for the C decoder alone
        json.loads(request)
    (event,) = Framer(max_size=MAX_MESSAGE_SIZE, max_depth=MAX_DEPTH).receive(request)
    assert isinstance(event, Message)
    assert isinstance(event.value, dict)
    reply = encode_return({}, event.value["id"])
    assert reply == b'{"return": {}, "id": ' + request_id.encode() + b"}\n"
