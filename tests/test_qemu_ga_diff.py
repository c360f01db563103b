"""Differential tests: the same bytes to the real qemu-ga and to ours, same replies.

Each case goes on a fresh connection after a resync (0xFF, then
guest-sync-delimited), and its replies are collected up to a trailing
guest-sync. Only cases where qemu-ga behaves well are compared; where it does
not (it hangs on ``{bad json``, answers a lone 0xFF with an error) our own
tests pin down the better behaviour.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import SocketClient

_ids = itertools.count(1000)
NEWER_THAN_7_2 = {"guest-get-load", "guest-network-get-route"}


@pytest.fixture(autouse=True)
def deep_values() -> Iterator[None]:
    """Replies may echo an id nested 1023 deep: parse and compare them too."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    yield
    sys.setrecursionlimit(limit)


def exchange(sock: Path, data: bytes) -> list[tuple[bool, Any]]:
    """Replies to ``data``: (preceded by 0xFF?, parsed JSON) per line."""
    client = SocketClient(sock)
    try:
        client.resync(next(_ids))
        client.send(data + b"\n")
        lines = client.replies_until_sync(next(_ids))
        return [(line.startswith(b"\xff"), json.loads(line.lstrip(b"\xff"))) for line in lines]
    finally:
        client.close()


SAME_REPLIES = [
    b'{"execute":"guest-ping"}',
    b'{"execute":"guest-ping","id":[1,{"a":null,"b":"\\u00e9"}]}',
    b'{"execute":"guest-ping","id":"\\u0000\xc3\xa9\xf0\x9f\x98\x80"}',
    b"{'execute':'guest-ping','id':'it\\'s \"q\"'}",
    b'{"execute":"guest-ping"}{"execute":"guest-ping","id":2}\n{"execute":"guest-ping","id":3}',
    b'{\n "execute":\n  "guest-ping"\n}',
    b'{"execute":"guest-ping","id":null}',
    b'{"execute":"guest-ping","id":-1.5e10}',
    b'{"execute":"guest-ping","arguments":{}}',
    b'{"execute":"guest-sync","arguments":{"id":0}}',
    b'{"execute":"guest-sync","arguments":{"id":-1}}',
    b'{"execute":"guest-sync","arguments":{"id":9223372036854775807}}',
    b'{"execute":"guest-sync","arguments":{"id":-9223372036854775808}}',
    b'{"execute":"guest-sync","arguments":{"id":-0}}',
    b'{"execute":"guest-sync","arguments":{"id":9223372036854775808}}',
    b'{"execute":"guest-sync","arguments":{"id":-9223372036854775809}}',
    b'{"execute":"guest-sync","arguments":{"id":1e3}}',
    b'{"execute":"guest-sync","arguments":{"id":1.5}}',
    b'{"execute":"guest-sync","arguments":{"id":1.0}}',
    b'{"execute":"guest-sync","arguments":{"id":"7"}}',
    b'{"execute":"guest-sync","arguments":{"id":true}}',
    b'{"execute":"guest-sync","arguments":{"id":null}}',
    b'{"execute":"guest-sync"}',
    b'{"execute":"guest-sync","arguments":{"id":1,"foo":2}}',
    b'{"execute":"guest-sync","arguments":{"id":"s"},"id":7}',
    b'{"execute":"guest-sync-delimited","arguments":{"id":5}}',
    b'{"execute":"guest-sync-delimited","arguments":{"id":6},"id":"x"}',
    b'{"execute":"guest-ping","arguments":{"foo":1}}',
    b'{"execute":"guest-ping","arguments":[]}',
    b'{"execute":"guest-ping","arguments":null}',
    b'{"execute":1}',
    b'{"arguments":{}}',
    b"{}",
    b'{"execute":"guest-ping","foo":1}',
    b'{"execute":"guest-ping","foo":1,"id":9}',
    b'{"exec-oob":"guest-ping"}',
    b'{"execute":"no-such-command"}',
    b'{"execute":"no-such-command","id":"x"}',
    b"[]",
    b"[1,2,{}]",
    b"123 ",
    b'"abc"',
    b"true ",
    b"null ",
    b'{"execute":"guest-ping","execute":"guest-info"}',
    b'{"execute":"guest-ping"} garbage {"execute":"guest-ping"}',
    b'{"execute":"guest-ping","id":' + b"[" * 1023 + b"]" * 1023 + b"}",
]


@pytest.mark.qemu_ga
@pytest.mark.parametrize("data", SAME_REPLIES, ids=lambda d: d[:50].decode(errors="replace"))
def test_same_replies_as_qemu_ga(qemu_ga_socket: Path, our_socket: Path, data: bytes) -> None:
    assert exchange(our_socket, data) == exchange(qemu_ga_socket, data)


SAME_ERROR_CLASS = [  # parse errors: one error each; the wording of the reason is ours
    b'{"execute":"guest-ping",}',
    b'{"execute" "guest-ping"}',
    b'{"execute":"guest-ping","id":"\\ud800"}',
    b'{"execute":"guest-ping","id":"\xc3"}',
    b"}",
    b"]",
    b"[}",
]


@pytest.mark.qemu_ga
@pytest.mark.parametrize("data", SAME_ERROR_CLASS, ids=lambda d: d[:50].decode(errors="replace"))
def test_same_error_classes_as_qemu_ga(qemu_ga_socket: Path, our_socket: Path, data: bytes) -> None:
    ours, theirs = exchange(our_socket, data), exchange(qemu_ga_socket, data)
    assert [r["error"]["class"] for _, r in ours] == [r["error"]["class"] for _, r in theirs]
    assert len(ours) == 1


@pytest.mark.qemu_ga
def test_guest_info_has_qemu_ga_shape(qemu_ga_socket: Path, our_socket: Path) -> None:
    [(_, ours)] = exchange(our_socket, b'{"execute":"guest-info"}')
    [(_, theirs)] = exchange(qemu_ga_socket, b'{"execute":"guest-info"}')
    assert set(ours["return"]) == set(theirs["return"]) == {"version", "supported_commands"}
    theirs_by_name = {c["name"]: c for c in theirs["return"]["supported_commands"]}
    for command in ours["return"]["supported_commands"]:
        assert set(command) == {"name", "enabled", "success-response"}
        if command["name"] not in theirs_by_name:
            # A plugin's extension (the example plugin is installed), our own
            # downstream extension (QAPI's __RFQDN_ prefix) or a command of a
            # QEMU newer than the reference qemu-ga 7.2.
            assert (
                command["name"].startswith(("guest-x-", "__io.github.trio-qga_"))
                or command["name"] in NEWER_THAN_7_2
            )
            continue
        assert command == theirs_by_name[command["name"]]


@pytest.mark.qemu_ga
def test_both_resync_after_a_stale_partial_request(qemu_ga_socket: Path, our_socket: Path) -> None:
    for sock in (qemu_ga_socket, our_socket):
        client = SocketClient(sock)
        client.send(b'{"execute":"guest-ping","arguments":{"a":[')
        client.resync(next(_ids))
        assert client.execute("guest-ping") == {"return": {}}
        client.close()


@pytest.mark.qemu_ga
def test_only_ours_answers_bad_json_before_a_0xff(qemu_ga_socket: Path, our_socket: Path) -> None:
    """qemu-ga waits forever on ``{bad json\\n``; ours answers at once."""
    for sock, answers in ((our_socket, True), (qemu_ga_socket, False)):
        client = SocketClient(sock)
        client.send(b'{bad json\n{"execute":"guest-ping"}\n')
        if answers:
            assert client.reply()["error"]["class"] == "GenericError"
            assert client.reply() == {"return": {}}
        else:
            with pytest.raises(TimeoutError):
                client.line(timeout=0.5)
        client.close()
