"""A request's shape (``agent.wire.request``): the well-formed ones in a few C
calls, everything else member by member, with the same outcome either way."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from agent.wire.encoder import NO_ID
from agent.wire.request import Request, RequestError, _parse_member_by_member, parse_request

members = st.dictionaries(
    st.sampled_from(["execute", "arguments", "id", "exec-oob", "x"]),
    st.one_of(
        st.text(max_size=3),
        st.integers(),
        st.none(),
        st.dictionaries(st.text(), st.integers()),
        st.lists(st.integers()),
    ),
    max_size=4,
)


def outcome(parse: Callable[[object], Request], value: object) -> object:
    try:
        return parse(value)
    except RequestError as err:
        return (err.desc, err.request_id)


@given(st.one_of(members, st.lists(st.integers()), st.text()))
def test_the_quick_path_agrees_with_the_member_by_member_one(value: object) -> None:
    assert outcome(parse_request, value) == outcome(_parse_member_by_member, value)


def test_a_well_formed_request() -> None:
    assert parse_request({"execute": "guest-ping"}) == Request("guest-ping", {}, NO_ID)
    arguments: dict[str, object] = {"id": 1}
    parsed = parse_request({"id": None, "arguments": arguments, "execute": "guest-sync"})
    assert parsed == Request("guest-sync", arguments, None)
    assert parsed.arguments is arguments
