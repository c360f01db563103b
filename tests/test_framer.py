"""The sans-IO framer: every input whole, byte by byte, and split at random."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent.wire.framer as framer_module
import agent.wire.scanner as scanner_module
from agent.core.config import MAX_DEPTH, MAX_MESSAGE_SIZE
from agent.wire.encoder import NO_ID, encode_error, encode_return
from agent.wire.framer import Event, Flush, Framer, Message, ParseError
from tests.support.clients import strict_json

pytestmark = pytest.mark.slow

PING = {"execute": "guest-ping"}


def agent_framer(**limits: int) -> Framer:
    """A framer with the agent's caps (qemu-ga's), or ``limits``."""
    return Framer(**{"max_size": MAX_MESSAGE_SIZE, "max_depth": MAX_DEPTH, **limits})


def feed(chunks: list[bytes], **limits: int) -> list[Event]:
    framer = agent_framer(**limits)
    events: list[Event] = []
    for chunk in chunks:
        events += framer.receive(chunk)
    return events


def all_ways(data: bytes, **limits: int) -> list[Event]:
    """Events for ``data`` fed whole, byte by byte and in two halves: all must agree."""
    whole = feed([data], **limits)
    assert feed([data[i : i + 1] for i in range(len(data))], **limits) == whole
    half = len(data) // 2
    assert feed([data[:half], data[half:]], **limits) == whole
    return whole


def messages(*values: object) -> list[Event]:
    return [Message(v) for v in values]


def test_one_request() -> None:
    assert all_ways(b'{"execute":"guest-ping"}') == messages(PING)


def test_several_requests_in_one_read_without_separators() -> None:
    data = b'{"execute":"guest-ping"}{"execute":"guest-info"}\n {"execute":"guest-ping","id":1}'
    assert all_ways(data) == messages(PING, {"execute": "guest-info"}, {**PING, "id": 1})


def test_split_by_structure_not_newline() -> None:
    data = b'{\n  "execute":\n  "guest-sync",\n  "arguments": {"id": 1}\n}\n'
    assert all_ways(data) == messages({"execute": "guest-sync", "arguments": {"id": 1}})


def test_single_quoted_strings_as_qemu_accepts() -> None:
    data = b"{'execute':'guest-ping','id':'it\\'s \"q\"'}"
    assert all_ways(data) == messages({**PING, "id": 'it\'s "q"'})


def test_backslash_quote_escape_in_double_quotes() -> None:
    assert all_ways(b'{"id":"a\\\'b"}') == messages({"id": "a'b"})


def test_strings_with_braces_and_escapes_do_not_confuse_framing() -> None:
    data = b'{"id":"}{\\"\\\\","x":"\\u00e9\\ud83d\\ude00"}{"execute":"guest-ping"}'
    assert all_ways(data) == messages({"id": '}{"\\', "x": "\u00e9\U0001f600"}, PING)


def test_utf8_split_inside_a_character() -> None:
    data = '{"id":"\u00e9\U0001f600"}'.encode()
    assert all_ways(data) == messages({"id": "\u00e9\U0001f600"})


def test_lone_ff_is_a_flush_not_an_error() -> None:
    assert all_ways(b"\xff") == [Flush()]


def test_ff_discards_partial_request() -> None:
    data = b'{"execute":"gue\xff{"execute":"guest-ping"}'
    assert all_ways(data) == [Flush(), Message(PING)]


def test_ff_inside_a_nested_partial_request() -> None:
    data = b'{"arguments":{"a":[1,\xff{"execute":"guest-ping"}'
    assert all_ways(data) == [Flush(), Message(PING)]


def test_bad_json_is_answered_at_once_and_resyncs_at_newline() -> None:
    data = b'{bad json\n{"execute":"guest-ping"}\n'
    events = all_ways(data)
    assert events == [ParseError("JSON parse error, invalid keyword 'bad'"), Message(PING)]


def test_error_is_reported_before_the_newline_arrives() -> None:
    assert feed([b"{bad"]) == []  # "bad" might go on: wait for the character after it
    assert feed([b"{bad json"]) == [ParseError("JSON parse error, invalid keyword 'bad'")]


def test_error_inside_message_resyncs_when_its_brackets_close() -> None:
    data = b'{"execute":"guest-ping",}{"execute":"guest-ping"}'
    assert all_ways(data) == [ParseError("JSON parse error, expecting value"), Message(PING)]


def test_junk_between_messages_is_one_error() -> None:
    data = b'{"execute":"guest-ping"} garbage {"execute":"guest-ping"}'
    assert all_ways(data) == [
        Message(PING),
        ParseError("JSON parse error, invalid keyword 'garbage'"),
        Message(PING),
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a" 1}', "missing : in object pair"),
        (b"{1:2}", "key is not a string in object"),
        (b'{"a":[}', "expecting value"),
        (b'{"a":1 "b":2}', "expected ',' or '}' after an object member"),
        (b"[1 2]", "expected ',' or ']' after an array element"),
        (b'{"a":1]', "expected ',' or '}' after an object member"),
        (b'{"a":tru}', "invalid keyword 'tru'"),
        (b"NaN ", "invalid keyword 'NaN'"),
        (b'{"x":01}', "stray '01'"),
        (b'{"x":-}', "stray '-'"),
        (b'{"x":@}', "stray '@'"),
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"x":1e999}', "number out of range"),
        (b'{"id":"\xc3"}', "invalid UTF-8 sequence in string"),
        (b'{"id":"\\ud800"}', "\\u escape is a lone surrogate"),
        (b'{"id":"\\x"}', "invalid escape '\\x'"),
        (b'{"id":"tab\there"}', "invalid character U+0009 in string"),
        (b"}", "expecting value"),
    ],
)
def test_invalid_json_gives_one_parse_error(data: bytes, reason: str) -> None:
    assert all_ways(data + b"\n") == [ParseError(f"JSON parse error, {reason}")]


def test_control_character_in_a_long_ascii_string_is_refused() -> None:
    # A run with no escape or newline takes the scanner's fast path; the
    # decoder still refuses the control character when the message ends.
    events = feed([b'{"id":"' + b"a" * 100 + b'\x01"}'])
    assert len(events) == 1
    assert events == [ParseError("JSON parse error, invalid character U+0001 in string")]


def test_raw_newline_inside_a_string_resyncs() -> None:
    data = b'{"execute":"guest-ping\n{"execute":"guest-ping"}\n'
    events = all_ways(data)
    assert events == [
        ParseError("JSON parse error, invalid character U+000A in string"),
        Message(PING),
    ]


def test_top_level_scalars_are_messages() -> None:
    # The framer does not judge; the dispatcher answers "must be a JSON object".
    assert all_ways(b'123 "abc" true null []') == messages(123, "abc", True, None, [])


def test_number_at_end_of_read_waits_for_its_end() -> None:
    assert feed([b"12"]) == []
    assert feed([b"12", b"34 "]) == messages(1234)
    assert feed([b'{"id":1', b"2.5e", b"1}"]) == messages({"id": 125.0})


def depth(value: object) -> int:
    levels = 0
    while isinstance(value, list) and value:
        value, levels = value[0], levels + 1
    return levels + isinstance(value, list)


def test_depth_limit_is_qemus_1024() -> None:
    ok = b"[" * 1024 + b"]" * 1024
    events = feed([ok])
    assert len(events) == 1
    assert isinstance(events[0], Message)
    assert depth(events[0].value) == 1024
    too_deep = b"[" * 1025 + b"]" * 1025 + b'{"execute":"guest-ping"}'
    assert all_ways(too_deep) == [ParseError("JSON nesting depth limit exceeded"), Message(PING)]


def test_deep_objects_inside_a_request_within_the_limit() -> None:
    data = b'{"id":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}"
    events = feed([data])
    assert len(events) == 1
    assert isinstance(events[0], Message)


def test_size_limit_gives_one_error_and_keeps_serving() -> None:
    big = b'{"execute":"guest-ping","id":"' + b"a" * 5000 + b'"}'
    events = all_ways(big + b'{"execute":"guest-ping"}', max_size=1000)
    assert events == [ParseError("JSON token size limit exceeded"), Message(PING)]


def test_size_limit_holds_no_more_than_the_limit() -> None:
    framer = agent_framer(max_size=1000)
    framer.receive(b'{"id":"')
    for _ in range(100):
        framer.receive(b"a" * 1000)
        assert framer._size <= 1000
    assert framer.receive(b'"}{"execute":"guest-ping"}') == messages(PING)


def test_the_agents_size_limit_is_64_mib() -> None:
    head = b'{"execute":"guest-ping","id":"'
    framer = agent_framer()
    events = framer.receive(head)
    chunk = b"a" * (1 << 20)
    for _ in range(64):
        events += framer.receive(chunk)
    assert events == [ParseError("JSON token size limit exceeded")]
    assert framer.receive(b'"}{"execute":"guest-ping"}') == messages(PING)


def test_a_big_request_over_many_reads() -> None:
    payload = "A" * (3 << 20)
    data = json.dumps({"execute": "guest-file-write", "arguments": {"buf-b64": payload}}).encode()
    events = feed([data[i : i + 65536] for i in range(0, len(data), 65536)])
    assert events == messages(json.loads(data))


def test_reset_drops_partial_state() -> None:
    framer = agent_framer()
    assert framer.receive(b'{"execute":') == []
    framer.reset()
    assert framer.receive(b'{"execute":"guest-ping"}') == messages(PING)


def test_wire_modules_import_no_io_library() -> None:
    modules = sorted(Path(framer_module.__file__).parent.glob("*.py"))
    assert len(modules) >= 9  # every module of agent.wire
    for module in modules:
        source = module.read_text()
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (
                node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
            )
        }
        assert not imported & {"trio", "socket", "asyncio", "os", "selectors"}, module.name


# ------------------------------------------------------------ properties --
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
requests = st.fixed_dictionaries(
    {"execute": st.text(min_size=1, max_size=20)}, optional={"id": json_values}
)


@settings(max_examples=300, deadline=None)
@given(st.lists(requests, min_size=1, max_size=6), st.data())
def test_any_split_of_a_valid_stream_gives_the_same_requests(
    values: list[dict[str, object]], data: st.DataObject
) -> None:
    separators = data.draw(
        st.lists(
            st.sampled_from(["", "\n", " ", "\r\n", "\t"]),
            min_size=len(values),
            max_size=len(values),
        )
    )
    stream = "".join(
        json.dumps(v, ensure_ascii=data.draw(st.booleans())) + sep
        for v, sep in zip(values, separators, strict=True)
    ).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert feed(chunks) == messages(*values)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_never_raise_and_a_newline_resyncs(chunks: list[bytes]) -> None:
    framer = Framer(max_size=4096, max_depth=32)
    for chunk in chunks:
        for event in framer.receive(chunk):
            assert isinstance(event, Message | ParseError | Flush)
    # Whatever came before, 0xFF and a newline bring the framer back in step.
    assert framer.receive(b'\xff\n{"execute":"guest-ping"}')[-1] == Message(PING)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="{}[]:,\"'\\ \nabtrue0123-.eE\xff", max_size=80))
def test_json_like_noise_never_raises(text: str) -> None:
    framer = agent_framer(max_depth=8)
    framer.receive(text.encode("utf-8", "surrogateescape"))
    assert framer.receive(b'\xff\n{"execute":"guest-ping"}')[-1] == Message(PING)


def replies_to(events: list[Event]) -> list[bytes]:
    """What the session sends for the framer's events (an id echoed where there is one)."""
    replies = []
    for event in events:
        if isinstance(event, ParseError):
            replies.append(encode_error("GenericError", event.reason))
        elif isinstance(event, Message):
            value = event.value
            request_id = value.get("id", NO_ID) if isinstance(value, dict) else NO_ID
            replies.append(encode_error("GenericError", "any", request_id))
    return replies


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_input_gives_replies_a_strict_parser_accepts(chunks: list[bytes]) -> None:
    framer = Framer(max_size=4096, max_depth=32)
    for chunk in chunks:
        for reply in replies_to(framer.receive(chunk)):
            strict_json(reply)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="{}[]:,\"'\\ \nabx\xff\xfe\xc3", max_size=80))
def test_bad_bytes_in_json_like_input_give_strict_replies(text: str) -> None:
    framer = agent_framer(max_depth=8)
    data = text.encode("latin-1")
    for reply in replies_to(framer.receive(data)):
        strict_json(reply)


@settings(max_examples=300, deadline=None)
@given(json_values, st.text(st.characters(codec=None), max_size=20))
def test_encoder_output_is_strict_json_whatever_the_strings(value: object, text: str) -> None:
    # Strings from the OS may hold lone surrogates (surrogateescape): U+FFFD on the wire.
    for reply in (encode_return([value, text], text), encode_error("GenericError", text, value)):
        strict_json(reply)


def test_invalid_utf8_after_an_escaped_quote_is_still_one_error() -> None:
    # Recovery skips strings as JSON does: \" does not end them.
    data = b'{"execute":"guest-ping","id":"x\xfe\\"}\xfe"}\n{"execute":"guest-ping"}'
    assert all_ways(data) == [
        ParseError("JSON parse error, invalid UTF-8 sequence in string"),
        *messages(PING),
    ]


def test_bad_bytes_are_shown_as_hex_escapes() -> None:
    assert feed([b"\xfe\xc3x\n"]) == [ParseError("JSON parse error, stray '\\xfe\\xc3x'")]
    assert feed([b'{"id":"\\\xfe"}\n']) == [
        ParseError("JSON parse error, invalid escape '\\\\xfe'")
    ]


def test_recovery_follows_brackets_within_its_budget_then_skips_the_line() -> None:
    def tail(strings: int) -> bytes:
        return b'{"a":x,"b":[' + b'"s",' * strings + b'"s"]}{"execute":"guest-ping","id":1}\n'

    within = tail(100) + b'{"execute":"guest-ping","id":2}'
    assert all_ways(within) == [
        ParseError("JSON parse error, invalid keyword 'x'"),
        *messages({**PING, "id": 1}, {**PING, "id": 2}),
    ]
    beyond = tail(scanner_module.RECOVERY_BUDGET) + b'{"execute":"guest-ping","id":2}'
    assert all_ways(beyond) == [
        ParseError("JSON parse error, invalid keyword 'x'"),
        *messages({**PING, "id": 2}),
    ]


class CountingPattern:
    """A compiled pattern that counts its searches (each one is a Python step)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.searches = 0

    def search(self, text: str, pos: int) -> re.Match[str] | None:
        self.searches += 1
        return self.pattern.search(text, pos)


@pytest.mark.parametrize(
    "tail",
    [b"[" * (4 << 20), b'{"a":' * (1 << 20), b"[]" * (2 << 20), b'"s",' * (1 << 20)],
    ids=["open brackets", "deep objects", "bracket pairs", "strings"],
)
def test_a_long_bad_message_is_skipped_in_bounded_steps(
    tail: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingPattern(scanner_module._RECOVERY_STOP)
    monkeypatch.setattr(scanner_module, "_RECOVERY_STOP", counting)
    framer = agent_framer()
    events: list[Event] = []
    data = b'{"a":x ' + tail + b'\n{"execute":"guest-ping"}'
    for start in range(0, len(data), 1 << 16):
        events += framer.receive(data[start : start + (1 << 16)])
    assert events == [ParseError("JSON parse error, invalid keyword 'x'"), *messages(PING)]
    # Past the budget, the rest goes by memchr to the newline, not a step per bracket.
    assert counting.searches <= scanner_module.RECOVERY_BUDGET


@pytest.mark.parametrize(
    "elements",
    [
        b"0," * (1 << 20),
        b'"abc",' * (1 << 18),
        b'{"a":1,"b":true},' * (1 << 16),
        b"[1,2]," * (1 << 18),
    ],
    ids=["numbers", "strings", "small objects", "small arrays"],
)
def test_runs_of_simple_elements_take_no_step_per_token(
    elements: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 0
    for name in ("_scan_scalar", "_scan_string"):  # a Python step per token
        method = getattr(scanner_module.MessageScanner, name)

        def counting(self: Any, *args: Any, _method: Any = method) -> Any:
            nonlocal steps
            steps += 1
            return _method(self, *args)

        monkeypatch.setattr(scanner_module.MessageScanner, name, counting)
    data = b'{"execute":"guest-ping","id":[' + elements + b"0]}"
    chunks = [data[start : start + (1 << 16)] for start in range(0, len(data), 1 << 16)]
    events = feed(chunks)
    assert events == messages(json.loads(data))
    # A few steps per read (the element cut by its end), not one per element.
    assert steps <= 4 * len(chunks)


def test_a_long_string_leaves_the_run_for_the_memchr_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's regex would scan a big write's base64 character by character (and,
    unterminated in the first read, all of it for nothing): a string longer than
    RUN_STRING_MAX ends the run and is found by ``_scan_string``."""
    strings: list[str] = []  # where each string token was scanned from
    method = scanner_module.MessageScanner._scan_string

    def counting(self: Any, text: str, pos: int) -> Any:
        strings.append(text[max(pos - 1, 0) : pos + 1])
        return method(self, text, pos)

    monkeypatch.setattr(scanner_module.MessageScanner, "_scan_string", counting)
    long = "x" * (scanner_module.RUN_STRING_MAX + 1)
    short = "y" * scanner_module.RUN_STRING_MAX
    head = '{"a":"' + short + '","b":"' + long + '","c":1,"d":"'
    data = (head + "z" * 8192 + '"}').encode()
    assert feed([data[:-2], data[-2:]]) == messages(json.loads(data))
    # A run took "a" (a string as long as a run's may be) and, after the long
    # one, "c"; the member "b" was scanned token by token (its key and value),
    # and so was "d", whose value the first read cuts (the run fails on it).
    assert strings == ['"b', '"x', '"d', '"z', '"']


def test_a_read_without_a_closing_brace_is_not_tried_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read of a big write cannot hold a whole object: the C decoder,
    which would scan it to its end and fail, is not called on it."""
    decoded: list[int] = []
    scan_once = framer_module._SCAN_ONCE

    def counting(text: str, pos: int) -> tuple[object, int]:
        decoded.append(len(text))
        return scan_once(text, pos)

    monkeypatch.setattr(framer_module, "_SCAN_ONCE", counting)
    data = b'{"execute":"guest-file-write","arguments":{"handle":1,"buf-b64":"' + b"A" * 65536
    framer = agent_framer()
    assert framer.receive(data) == []
    assert decoded == []
    assert framer.receive(b'"}}\n{"execute":"guest-ping"}') == messages(
        {"execute": "guest-file-write", "arguments": {"handle": 1, "buf-b64": "A" * 65536}}, PING
    )
    assert decoded == [len('"}}\n{"execute":"guest-ping"}')]  # the ping, at once


json_tokens = st.lists(
    st.sampled_from(
        [
            *("{", "}", "[", "]", ":", ",", " ", "\n", '"a"', '"b\\n"', '"c', "1", "-2.5e3"),
            *("01", "true", "nul", "'x'", "\\", "\x01", "\udcfe", "\udcff", '{"k":', '"k":1,'),
            "0,",
            '"' + "x" * (scanner_module.RUN_STRING_MAX + 1) + '"',  # too long for a run
        ]
    ),
    max_size=40,
).map(lambda tokens: "".join(tokens).encode("utf-8", "surrogateescape"))


@settings(max_examples=500, deadline=None)
@given(json_tokens, st.data())
def test_runs_give_the_events_of_token_by_token_scanning(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    chunks = [data[:cut], data[cut:]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scanner_module, "RUN_MIN_TEXT", 0)  # runs in the shortest texts too
        with_runs = feed(chunks, max_depth=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scanner_module, "_RUN_STATES", {"[": frozenset(), "{": frozenset()})
        assert feed(chunks, max_depth=4) == with_runs
