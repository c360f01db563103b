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


async def looks(policy: PollWhileAnswered, silent: int | None) -> int:
    """How many times the policy looked for the peer's message, once."""
    peer = Peer(silent)
    await policy.next_message(peer.try_read)
    return peer.looks


async def test_fruitless_polls_in_a_row_make_more_replies_look_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(after_reply, "BACKOFF_MAX", 4)
    policy = PollWhileAnswered()
    pattern = []
    for _ in range(12):  # a host that never answers in time
        pattern.append("poll" if await looks(policy, silent=None) > 1 else "look")
    assert pattern == ["poll", "look", "poll", *["look"] * 2, "poll", *["look"] * 4, "poll", "look"]


async def test_a_poll_that_finds_the_message_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = PollWhileAnswered()
    assert await looks(policy, silent=None) > 1  # a miss: one reply looks once
    assert await looks(policy, silent=None) == 1
    assert await looks(policy, silent=None) > 1  # another: two replies look once
    assert [await looks(policy, silent=None) for _ in range(2)] == [1, 1]
    monkeypatch.setattr(after_reply, "WINDOW", 60.0)
    assert await looks(policy, silent=3) == 4  # the host is back in time: found
    monkeypatch.setattr(after_reply, "WINDOW", 50e-6)
    assert await looks(policy, silent=None) > 1  # a miss
    assert await looks(policy, silent=None) == 1  # one reply looks once, not four
    assert await looks(policy, silent=None) > 1


async def test_each_policy_keeps_its_own_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    slow, fast = PollWhileAnswered(), PollWhileAnswered()
    assert await slow.next_message(Peer(silent=None).try_read) is None
    monkeypatch.setattr(after_reply, "WINDOW", 60.0)
    peer = Peer(silent=2)
    assert await fast.next_message(peer.try_read) == b"next"
