"""The post-reply poll policy (``agent.transports.after_reply``): how often it looks
for the peer's next message, counted through a stand-in for the stream's read."""

from __future__ import annotations

import pytest

from agent.transports import after_reply
from agent.transports.after_reply import PollWhileAnswered


class Peer:
    """A stream's non-blocking read: nothing for the first ``silent`` looks."""

    def __init__(self, silent: int | None) -> None:
        self.silent = silent  # None: nothing comes at all
        self.looks = 0

    def try_read(self) -> bytes | None:
        self.looks += 1
        if self.silent is None or self.looks <= self.silent:
            return None
        return b"next"


async def test_a_message_already_there_takes_one_look() -> None:
    peer = Peer(silent=0)
    assert await PollWhileAnswered().next_message(peer.try_read) == b"next"
    assert peer.looks == 1


async def test_a_message_that_comes_within_the_window_is_polled_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(after_reply, "WINDOW", 60.0)  # a slow machine's passes fit in
    peer = Peer(silent=5)
    assert await PollWhileAnswered().next_message(peer.try_read) == b"next"
    assert peer.looks == 6


async def test_a_fruitless_poll_makes_the_next_replies_look_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(after_reply, "BACKOFF", 3)
    policy = PollWhileAnswered()
    nothing = Peer(silent=None)
    assert await policy.next_message(nothing.try_read) is None
    assert nothing.looks > 1  # it polled for the window
    for _ in range(3):
        once = Peer(silent=1)  # would come on the second look
        assert await policy.next_message(once.try_read) is None
        assert once.looks == 1
    monkeypatch.setattr(after_reply, "WINDOW", 60.0)
    again = Peer(silent=1)
    assert await policy.next_message(again.try_read) == b"next"  # polling again
    assert again.looks == 2


async def test_each_policy_keeps_its_own_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    slow, fast = PollWhileAnswered(), PollWhileAnswered()
    assert await slow.next_message(Peer(silent=None).try_read) is None
    monkeypatch.setattr(after_reply, "WINDOW", 60.0)
    peer = Peer(silent=2)
    assert await fast.next_message(peer.try_read) == b"next"
