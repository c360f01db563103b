"""fsfreeze without real filesystems: the state machine, the mount table, the
freezer on a recording fake of the ioctls, the hook, the marker, auto-thaw,
cancellation and the held log."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
import trio
import trio.testing

from agent import Agent, AgentConfig
from agent.client import QgaClient
from agent.errors import GenericError
from agent.fsfreeze.freezer import Freezer
from agent.fsfreeze.ioctl import ALLOW_ENV, REFUSED_ENV, check_allowed
from agent.fsfreeze.marker import MARKER_NAME
from agent.fsfreeze.mounts import Mount, freeze_plan, parse_mountinfo, unfreezable
from agent.fsfreeze.state import (
    TRANSITIONS,
    FreezeEvent,
    FreezeMachine,
    FreezeState,
    FreezeStateError,
)
from agent.fsguard import FsGuard
from agent.logholding import HoldingHandler
from tests.fsfreeze_fakes import (
    FAKE,
    FAKE_FREEZE_ORDER,
    FAKE_TABLE,
    FakeIoctls,
    mountinfo_line,
    write_table,
)
from tests.qga_client import StreamClient

# ------------------------------------------------------------ state machine --


def test_every_transition_outside_the_table_is_refused() -> None:
    for state in FreezeState:
        for event in FreezeEvent:
            machine = FreezeMachine(state)
            if (state, event) in TRANSITIONS:
                assert machine.fire(event) is TRANSITIONS[state, event]
            else:
                with pytest.raises(FreezeStateError):
                    machine.fire(event)
                assert machine.state is state


def test_frozen_means_anything_but_thawed() -> None:
    assert [s for s in FreezeState if FreezeMachine(s).frozen] == [
        FreezeState.FREEZING,
        FreezeState.FROZEN,
        FreezeState.THAWING,
    ]


# -------------------------------------------------------------- mount table --


def test_mountinfo_fields_escapes_and_optional_tags() -> None:
    data = (
        b"36 35 98:0 /mnt1 /with\\040space\\134x rw,noatime master:1 shared:2 - ext3 /dev/root rw\n"
        b"garbage line\n"
        b"37 35 0:21 / /proc rw - proc proc rw\n"
    )
    [mount, proc] = parse_mountinfo(data)
    assert mount == Mount(
        mountpoint="/with space\\x",
        device=os.makedev(98, 0),
        fstype="ext3",
        source="/dev/root",
        root="/mnt1",
    )
    assert mount.freezable
    assert not proc.freezable


@pytest.mark.parametrize(
    ("device", "fstype", "source", "freezable"),
    [
        ("8:1", "ext4", "/dev/sda1", True),
        ("253:0", "xfs", "/dev/mapper/vg-root", True),
        ("0:45", "btrfs", "/dev/vda2", True),  # btrfs: anonymous device, real source
        ("0:21", "proc", "proc", False),
        ("0:25", "tmpfs", "tmpfs", False),
        ("0:50", "nfs4", "server:/export", False),
        ("0:51", "fuse.sshfs", "user@host:", False),
        ("7:3", "squashfs", "/dev/loop3", False),  # read-only by nature
        ("11:0", "iso9660", "/dev/sr0", False),
    ],
)
def test_which_filesystems_a_freeze_covers(
    device: str, fstype: str, source: str, freezable: bool
) -> None:
    [mount] = parse_mountinfo(mountinfo_line(1, "/m", device, fstype, source).encode())
    assert mount.freezable is freezable


def test_plan_is_children_first_one_per_device_without_pseudo_or_network() -> None:
    plan = freeze_plan(parse_mountinfo(FAKE_TABLE.encode()), None)
    assert [mount.mountpoint for mount in plan] == FAKE_FREEZE_ORDER


def test_plan_skips_a_mount_hidden_by_a_later_one_on_the_same_path() -> None:
    table = mountinfo_line(1, "/m", "8:1", "ext4", "/dev/sda1") + mountinfo_line(
        2, "/m", "8:2", "ext4", "/dev/sda2"
    )
    [mount] = freeze_plan(parse_mountinfo(table.encode()), None)
    assert mount.device == os.makedev(8, 2)


def test_plan_for_a_list_checks_each_mountpoint() -> None:
    mounts = parse_mountinfo(FAKE_TABLE.encode())
    plan = freeze_plan(mounts, [FAKE, f"{FAKE}/data/deep/er/", f"{FAKE}/srv"])
    # Sorted children first; /srv is the device of FAKE again: frozen once.
    assert [m.mountpoint for m in plan] == [f"{FAKE}/data/deep/er", FAKE]
    # What no freeze can cover is left out, each with its reason for the log.
    invalid = [f"{FAKE}/data/deep", "relative/path", f"{FAKE}/run"]
    assert [m.mountpoint for m in freeze_plan(mounts, [*invalid, FAKE])] == [FAKE]
    assert freeze_plan(mounts, invalid) == []
    assert unfreezable(mounts, [*invalid, FAKE]) == {
        f"{FAKE}/data/deep": "not a mounted filesystem",
        "relative/path": "not a mounted filesystem",
        f"{FAKE}/run": "a tmpfs filesystem, which cannot be frozen",
    }
    assert freeze_plan(mounts, []) == []


# -------------------------------------------------------------------- guard --


def test_guard_allows_only_listed_mountpoints_off_the_root_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = tmp_path / "refused"
    monkeypatch.setenv(REFUSED_ENV, str(refused))  # not the suite's: no failure
    root_device = os.stat("/").st_dev
    other_device = root_device + 1
    monkeypatch.setenv(ALLOW_ENV, f"/proc{os.pathsep}{tmp_path}{os.pathsep}/")
    check_allowed("/proc", other_device)  # listed, a mountpoint, not the root device
    with pytest.raises(PermissionError, match="refused"):
        check_allowed(str(tmp_path), other_device)  # listed, but not a mountpoint
    with pytest.raises(PermissionError, match="refused"):
        check_allowed("/", root_device)  # listed, but the root filesystem
    with pytest.raises(PermissionError, match="refused"):
        check_allowed("/sys", other_device)  # not listed
    assert refused.read_text().split() == [str(tmp_path), "/", "/sys"]
    monkeypatch.delenv(ALLOW_ENV)
    check_allowed("/sys", other_device)  # no list: no guard


# ------------------------------------------------------------------ freezer --


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return write_table(tmp_path)


def fake_freezer(tmp_path: Path, table: Path, ioctls: FakeIoctls, **options: object) -> Freezer:
    """No deadline on the fake ioctls: they never hang, and under an autojump
    clock virtual time runs ahead while a worker thread does its work."""
    return Freezer(
        str(tmp_path),
        mount_table=str(table),
        ioctls=ioctls,
        watchdog=False,
        fs=FsGuard(math.inf),
        **options,  # type: ignore[arg-type]
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
    tmp_path: Path, table: Path
) -> None:
    release = threading.Event()
    ioctls = FakeIoctls(block={f"{FAKE}/data": release})
    config = AgentConfig(statedir=str(tmp_path), pidfile=None, command_timeout=0.1)
    agent = Agent(config, freezer=fake_freezer(tmp_path, table, ioctls))
    client_end, agent_end = trio.testing.memory_stream_pair()
    async with agent, trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve, agent_end)
        nursery.start_soon(_set_after, release, 0.3)
        client = StreamClient(client_end)
        reply = await client.execute("guest-fsfreeze-freeze")
        assert reply == {
            "error": {
                "class": "GenericError",
                "desc": "command guest-fsfreeze-freeze timed out after 0.1 s",
            }
        }
        assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
        await client_end.aclose()
    with trio.fail_after(5):  # the abandoned ioctl thaws its filesystem once through
        while f"{FAKE}/data" not in ioctls.called("thaw"):  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert ioctls.frozen == set()


async def _set_after(event: threading.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    event.set()


async def test_marker_is_written_before_freezing_and_removed_after_thawing(
    tmp_path: Path, table: Path
) -> None:
    marker = tmp_path / MARKER_NAME
    seen: list[object] = []

    class MarkerWatchingIoctls(FakeIoctls):
        def freeze(self, mountpoint: str, device: int | None) -> bool:
            seen.append(json.loads(marker.read_text()))
            return super().freeze(mountpoint, device)

    freezer = fake_freezer(tmp_path, table, MarkerWatchingIoctls())
    await freezer.freeze([f"{FAKE}/data"])
    assert seen == [[f"{FAKE}/data"]]
    assert marker.exists()
    await freezer.thaw()
    assert not marker.exists()


async def test_started_with_our_marker_it_is_frozen_and_thaws_what_it_says(
    tmp_path: Path, table: Path
) -> None:
    (tmp_path / MARKER_NAME).write_text(json.dumps([f"{FAKE}/data"]))
    ioctls = FakeIoctls()
    ioctls.frozen.add(f"{FAKE}/data")  # left frozen by the previous agent
    freezer = fake_freezer(tmp_path, table, ioctls)
    assert freezer.state is FreezeState.FROZEN
    assert await freezer.thaw() == 1
    assert ioctls.called("thaw") == [f"{FAKE}/data"]
    assert not (tmp_path / MARKER_NAME).exists()


async def test_started_with_qemu_gas_empty_marker_the_thaw_covers_the_table(
    tmp_path: Path, table: Path
) -> None:
    (tmp_path / MARKER_NAME).touch()
    ioctls = FakeIoctls()
    ioctls.frozen.update(FAKE_FREEZE_ORDER)
    freezer = fake_freezer(tmp_path, table, ioctls)
    assert freezer.frozen
    assert await freezer.thaw() == 3
    assert set(ioctls.called("thaw")) == set(FAKE_FREEZE_ORDER)


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


async def test_the_agent_thaws_when_it_stops(tmp_path: Path, table: Path) -> None:
    ioctls = FakeIoctls()
    agent = Agent(
        AgentConfig(statedir=str(tmp_path), pidfile=None),
        freezer=fake_freezer(tmp_path, table, ioctls),
    )
    with trio.CancelScope() as scope:
        async with agent:
            assert await agent.context.state.freezer.freeze() == 3
            scope.cancel()  # as SIGTERM does to the CLI's nursery
            await trio.sleep_forever()
    assert ioctls.frozen == set()
    assert not agent.context.state.frozen


# --------------------------------------------------------------------- hook --


def make_hook(tmp_path: Path, body: str) -> Path:
    hook = tmp_path / "fsfreeze-hook"
    hook.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/hook.log\n{body}\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hook


def hook_log(tmp_path: Path) -> list[str]:
    path = tmp_path / "hook.log"
    return path.read_text().split() if path.exists() else []


async def test_hook_runs_freeze_before_and_thaw_after(tmp_path: Path, table: Path) -> None:
    ioctls = FakeIoctls()
    hook = make_hook(tmp_path, "")
    freezer = fake_freezer(tmp_path, table, ioctls, hook=str(hook))
    await freezer.freeze([f"{FAKE}/data"])
    assert hook_log(tmp_path) == ["freeze"]
    assert ioctls.called("thaw") == []
    await freezer.thaw()
    assert hook_log(tmp_path) == ["freeze", "thaw"]


async def test_a_failing_freeze_hook_fails_the_command_with_its_output(
    tmp_path: Path, table: Path
) -> None:
    ioctls = FakeIoctls()
    hook = make_hook(tmp_path, 'echo "database is busy" >&2; exit 3')
    freezer = fake_freezer(tmp_path, table, ioctls, hook=str(hook))
    with pytest.raises(GenericError) as caught:
        await freezer.freeze()
    assert caught.value.desc == "fsfreeze hook has failed with status 3: database is busy"
    assert ioctls.calls == []
    assert hook_log(tmp_path) == ["freeze"]  # no thaw for a freeze that did not happen
    assert freezer.state is FreezeState.THAWED


async def test_a_missing_hook_fails_the_freeze_as_in_qemu_ga(tmp_path: Path, table: Path) -> None:
    freezer = fake_freezer(tmp_path, table, FakeIoctls(), hook=str(tmp_path / "none"))
    with pytest.raises(GenericError) as caught:
        await freezer.freeze()
    assert caught.value.desc == (
        f"can't access fsfreeze hook '{tmp_path}/none': No such file or directory"
    )


async def test_a_failed_freeze_runs_the_thaw_hook_after_a_good_freeze_hook(
    tmp_path: Path, table: Path
) -> None:
    ioctls = FakeIoctls(fail={FAKE: OSError(errno.EROFS, "Read-only file system")})
    hook = make_hook(tmp_path, "")
    freezer = fake_freezer(tmp_path, table, ioctls, hook=str(hook))
    with pytest.raises(GenericError, match="Read-only file system"):
        await freezer.freeze()
    assert hook_log(tmp_path) == ["freeze", "thaw"]
    assert ioctls.frozen == set()


async def test_a_failing_thaw_hook_fails_the_thaw_but_the_filesystems_are_thawed(
    tmp_path: Path, table: Path
) -> None:
    ioctls = FakeIoctls()
    hook = make_hook(tmp_path, '[ "$1" = thaw ] && { echo cannot resume; exit 1; }; exit 0')
    freezer = fake_freezer(tmp_path, table, ioctls, hook=str(hook))
    assert await freezer.freeze() == 3
    with pytest.raises(GenericError, match="fsfreeze hook has failed with status 1: cannot resume"):
        await freezer.thaw()
    assert ioctls.frozen == set()
    assert freezer.state is FreezeState.THAWED


async def test_a_hook_that_hangs_is_killed_and_reported(tmp_path: Path, table: Path) -> None:
    """A hook stuck (here: in sleep, with a child holding its output) fails the
    freeze at its deadline; its whole process group is killed."""
    ioctls = FakeIoctls()
    hook = make_hook(tmp_path, 'echo "flushing"; sleep 600 & echo $! > "$0.child"; wait')
    freezer = fake_freezer(tmp_path, table, ioctls, hook=str(hook), hook_timeout=3)
    with trio.fail_after(10), pytest.raises(GenericError) as caught:
        await freezer.freeze()
    assert caught.value.desc == "fsfreeze hook did not finish within 3 s: flushing"
    assert ioctls.calls == []
    assert freezer.state is FreezeState.THAWED
    child = int((tmp_path / "fsfreeze-hook.child").read_text())
    try:  # killed: gone, or a zombie until init reaps it
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


# ---------------------------------------------------------------- held logs --


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


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


def test_holding_handler_holds_caps_and_writes_in_order(caplog: pytest.LogCaptureFixture) -> None:
    target = ListHandler()
    handler = HoldingHandler(target, max_held=3)
    log = logging.getLogger("test.holding")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("before")
        handler.hold()
        for n in range(5):
            log.warning("held %d", n)
        handler.flush()  # as logging's shutdown does: nothing while held
        assert target.messages == ["before"]
        handler.resume()
        assert target.messages == [
            "before",
            "held 0",
            "held 1",
            "held 2",
        ]
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert "2 log records were dropped while filesystems were frozen" in caplog.text


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


@pytest.fixture
async def fake_agent_client(tmp_path: Path, table: Path) -> AsyncIterator[StreamClient]:
    agent = Agent(
        AgentConfig(statedir=str(tmp_path), pidfile=None),
        freezer=fake_freezer(tmp_path, table, FakeIoctls()),
    )
    client_end, agent_end = trio.testing.memory_stream_pair()
    async with agent, trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve, agent_end)
        yield StreamClient(client_end)
        await client_end.aclose()


async def test_commands_while_frozen(fake_agent_client: StreamClient) -> None:
    client = fake_agent_client
    assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
    assert await client.execute("guest-fsfreeze-freeze-list", {"mountpoints": [FAKE]}) == {
        "return": 1
    }
    assert await client.execute("guest-fsfreeze-status") == {"return": "frozen"}
    for name in ("guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-file-open"):
        reply = await client.execute(name)
        assert reply == {
            "error": {
                "class": "CommandNotFound",
                "desc": f"Command {name} has been disabled: the command is not allowed",
            }
        }
    assert await client.execute("guest-sync", {"id": 1}) == {"return": 1}
    assert await client.execute("guest-fsfreeze-thaw") == {"return": 1}
    assert await client.execute("guest-fsfreeze-thaw") == {"return": 0}
    reply = await client.execute("guest-fsfreeze-freeze-list", {"mountpoints": ["/nowhere"]})
    assert reply == {"return": 0}  # ignored, as the schema says
    assert await client.execute("guest-fsfreeze-freeze-list", {"mountpoints": []}) == {"return": 0}
    assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}


async def test_the_pytest_plugins_agent_has_nothing_to_freeze(qga_client: QgaClient) -> None:
    """A downstream test suite must not freeze the machine it runs on."""
    assert await qga_client.execute("guest-fsfreeze-freeze") == 0
