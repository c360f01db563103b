"""The freezer (``agent/system/fsfreeze/freezer.py``) on a recording fake of the ioctls:
counts and order, failures, cancellation, auto-thaw, the agent's stop and
the log held while frozen."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from agent.daemon.logs import HoldingHandler
from agent.errors import GenericError
from agent.system.fsfreeze.freezer import Freezer
from agent.system.fsfreeze.marker import MARKER_NAME
from agent.system.fsfreeze.state import (
    FreezeState,
)
from tests.support.agents import AgentFactory, served
from tests.support.fsfreeze_fakes import (
    FAKE,
    FAKE_FREEZE_ORDER,
    FakeIoctls,
    ListHandler,
    fake_freezer,
)


async def test_freeze_and_thaw_count_and_order(tmp_path: Path, table: Path) -> None:
    ioctls = FakeIoctls()
    freezer = fake_freezer(tmp_path, table, ioctls)
    assert await freezer.freeze() == 3
    assert freezer.state is FreezeState.FROZEN
    assert ioctls.called("freeze") == FAKE_FREEZE_ORDER
    assert await freezer.thaw() == 3
    assert ioctls.called("thaw") == FAKE_FREEZE_ORDER[::-1]  # parents first
    assert not freezer.frozen
    assert await freezer.thaw() == 0
    assert len(ioctls.calls) == 6  # a thaw with nothing frozen touches nothing


async def test_a_failed_freeze_thaws_what_it_froze_before_the_error(
    tmp_path: Path, table: Path
) -> None:
    ioctls = FakeIoctls(fail={f"{FAKE}/data": OSError(errno.EIO, "Input/output error")})
    freezer = fake_freezer(tmp_path, table, ioctls)
    with pytest.raises(GenericError, match=f"failed to freeze {FAKE}/data: Input/output error"):
        await freezer.freeze()
    assert ioctls.calls == [
        ("freeze", f"{FAKE}/data/deep/er"),
        ("freeze", f"{FAKE}/data"),
        ("thaw", f"{FAKE}/data/deep/er"),
    ]
    assert ioctls.frozen == set()
    assert freezer.state is FreezeState.THAWED
    assert not (tmp_path / MARKER_NAME).exists()


async def test_unsupported_filesystems_are_skipped_and_not_counted(
    tmp_path: Path, table: Path
) -> None:
    ioctls = FakeIoctls(unsupported=(f"{FAKE}/data",))
    freezer = fake_freezer(tmp_path, table, ioctls)
    assert await freezer.freeze() == 2
    assert await freezer.thaw() == 2
    everything = FakeIoctls(unsupported=tuple(FAKE_FREEZE_ORDER))
    freezer = fake_freezer(tmp_path, table, everything)
    assert await freezer.freeze() == 0
    assert freezer.state is FreezeState.THAWED  # nothing frozen: not frozen


async def test_a_freeze_cancelled_part_way_thaws_what_it_froze(tmp_path: Path, table: Path) -> None:
    release = threading.Event()
    ioctls = FakeIoctls(block={f"{FAKE}/data": release})
    freezer = fake_freezer(tmp_path, table, ioctls)

    async def cancel_in_flight(scope: trio.CancelScope) -> None:
        assert await trio.to_thread.run_sync(ioctls.blocked.wait, 10)
        scope.cancel()  # while the ioctl is in flight, then let it complete
        release.set()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_in_flight, scope)
            await freezer.freeze()
    assert scope.cancelled_caught
    # The ioctl in flight was abandoned: it completed (it cannot be interrupted)
    # and its thread undid it; the others were thawed before freeze() returned,
    # and the last filesystem was never touched.
    with trio.fail_after(5):
        while len(ioctls.called("thaw")) < 2:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert ioctls.called("freeze") == FAKE_FREEZE_ORDER[:2]
    assert sorted(ioctls.called("thaw")) == sorted(FAKE_FREEZE_ORDER[:2])
    assert ioctls.frozen == set()
    assert freezer.state is FreezeState.THAWED


async def test_a_command_timeout_mid_freeze_replies_an_error_and_thaws(
    agent_factory: AgentFactory, tmp_path: Path, table: Path
) -> None:
    """The FIFREEZE of /data blocks until the timeout has answered; a second
    is far more than the freeze takes to get there, even on a loaded machine."""
    release = threading.Event()
    ioctls = FakeIoctls(block={f"{FAKE}/data": release})
    freezer = fake_freezer(tmp_path, table, ioctls)
    agent = agent_factory(command_timeout=1.0, freezer=freezer)
    async with served(agent) as client:
        try:
            reply = await client.execute("guest-fsfreeze-freeze")
            assert ioctls.blocked.is_set(), "the timeout came before the freeze of /data"
        finally:
            release.set()
        assert reply == {
            "error": {
                "class": "GenericError",
                "desc": "command guest-fsfreeze-freeze timed out after 1.0 s",
            }
        }
        assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
    with trio.fail_after(5):  # the abandoned ioctl thaws its filesystem once through
        while f"{FAKE}/data" not in ioctls.called("thaw"):  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert ioctls.frozen == set()


async def test_auto_thaw_fires_after_the_timeout_and_says_so(
    tmp_path: Path,
    table: Path,
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The clock moves only when the test moves it: the freezer's ioctls run in
    threads, and an autojump clock jumps while a thread runs (under load, past
    the deadlines this test checks)."""
    ioctls = FakeIoctls()
    freezer = fake_freezer(tmp_path, table, ioctls, thaw_timeout=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(freezer.run)
        assert await freezer.freeze() == 3
        await advance(mock_clock, 59)
        assert freezer.state is FreezeState.FROZEN
        await advance(mock_clock, 1)
        await settled(freezer)  # the thaw's ioctls run in threads
        assert ioctls.frozen == set()
        # A thaw by the host disarms it: a second freeze is thawed by the host only.
        await freezer.freeze()
        await advance(mock_clock, 30)
        assert await freezer.thaw() == 3
        await freezer.freeze()
        await advance(mock_clock, 59)
        assert freezer.state is FreezeState.FROZEN  # the timer restarted at this freeze
        await freezer.thaw()
        nursery.cancel_scope.cancel()
    assert "auto-thaw: filesystems frozen for 60 s" in caplog.text


async def advance(clock: trio.testing.MockClock, seconds: float) -> None:
    """Move the clock, then let every task that was due run until it blocks."""
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def settled(freezer: Freezer) -> None:
    """Wait until the freezer is back to THAWED; the clock stands still meanwhile
    (the polling waits in real time, in a thread)."""
    for _ in range(1000):
        if freezer.state is FreezeState.THAWED:
            return
        await trio.to_thread.run_sync(time.sleep, 0.01)
    raise AssertionError(f"still {freezer.state} after 10 s")


async def test_the_agent_thaws_when_it_stops(
    agent_factory: AgentFactory, tmp_path: Path, table: Path
) -> None:
    ioctls = FakeIoctls()
    agent = agent_factory(freezer=fake_freezer(tmp_path, table, ioctls))
    with trio.CancelScope() as scope:
        async with agent:
            assert await agent.context.freezer.freeze() == 3
            scope.cancel()  # as SIGTERM does to the CLI's nursery
            await trio.sleep_forever()
    assert ioctls.frozen == set()
    assert not agent.context.freezer.frozen


@pytest.fixture
def held_root_log() -> Iterator[HoldingHandler]:
    """The CLI's setup: the root logger's handler wrapped in a HoldingHandler,
    which the CLI hands the agent to hold while frozen."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    holding = HoldingHandler(ListHandler())
    root.handlers[:] = [holding]
    root.setLevel(logging.INFO)
    yield holding
    root.handlers[:], level = saved
    root.setLevel(level)


async def test_log_is_held_while_frozen_and_written_after_thaw(
    tmp_path: Path, table: Path, held_root_log: HoldingHandler
) -> None:
    written = held_root_log.target
    assert isinstance(written, ListHandler)
    freezer = fake_freezer(tmp_path, table, FakeIoctls(), log_hold=held_root_log)
    await freezer.freeze()
    logging.getLogger("test").warning("while frozen")
    assert "while frozen" not in written.messages
    await freezer.thaw()
    assert "while frozen" in written.messages
    assert written.messages[-1] == "thawed 3 filesystem(s)"
