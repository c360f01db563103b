"""fsfreeze for real: FIFREEZE and FITHAW on the suite's scratch ext4 and xfs
filesystems (``tests/support/scratch.py``), through an agent served in this process.

A frozen filesystem is shown frozen by a write to it that blocks (in a
thread) until the thaw, after which the data is there.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import math
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from agent.core.config import DEFAULT_FS_TIMEOUT, KERNEL_MOUNT_TABLE
from agent.system.fsfreeze.freezer import Freezer
from agent.system.fsfreeze.ioctl import LinuxIoctls
from agent.system.fsfreeze.marker import MARKER_NAME
from agent.system.fsguard import FsGuard
from tests.support.agents import AgentFactory, served
from tests.support.scratch import BlockedWrite, Scratch

pytestmark = pytest.mark.slow

_names = itertools.count()


def write_to(directory: Path) -> BlockedWrite:
    """Start a write of a new file in ``directory``."""
    number = next(_names)
    return BlockedWrite(directory / f"write-{time.time_ns()}-{number}", b"data %d" % number)


def error(desc: str, error_class: str = "GenericError") -> dict[str, Any]:
    return {"error": {"class": error_class, "desc": desc}}


@pytest.fixture
def scratch_agent(agent_factory: AgentFactory, scratch: Scratch) -> AgentFactory:
    """Agents whose mount table lists the scratch filesystems, nothing else."""
    return functools.partial(agent_factory, mount_table=str(scratch.mount_table))


def recording_freezer(
    tmp_path: Path, scratch: Scratch, ioctls: LinuxIoctls, *, watchdog: bool = True
) -> Freezer:
    """A freezer of the scratch filesystems through ``ioctls``, with the agent's deadline."""
    return Freezer(
        str(tmp_path),
        mount_table=str(scratch.mount_table),
        fs=FsGuard(DEFAULT_FS_TIMEOUT, mount_table=KERNEL_MOUNT_TABLE),
        ioctls=ioctls,
        watchdog=watchdog,
    )


class RecordingIoctls(LinuxIoctls):
    """The real calls, recorded; ``before_freeze`` may fail or delay one."""

    def __init__(self, before_freeze: Callable[[str], None] = lambda path: None) -> None:
        self.before_freeze = before_freeze
        self.frozen: list[str] = []

    def freeze(self, mountpoint: str, device: int | None) -> bool:
        self.before_freeze(mountpoint)
        frozen = super().freeze(mountpoint, device)
        self.frozen.append(mountpoint)
        return frozen


async def test_freeze_blocks_writes_until_thaw(
    scratch_agent: AgentFactory, scratch: Scratch
) -> None:
    async with served(scratch_agent()) as client:
        # ext4 and xfs; the tmpfs is skipped, the bind mount is ext4 again.
        assert await client.execute("guest-fsfreeze-freeze") == {"return": 2}
        assert await client.execute("guest-fsfreeze-status") == {"return": "frozen"}
        writes = [write_to(scratch.ext4), write_to(scratch.xfs), write_to(scratch.bind)]
        assert all([await write.still_blocked(0.5) for write in writes])
        untouched = write_to(scratch.tmpfs)
        assert await untouched.finished(5)
        assert await client.execute("guest-ping") == {"return": {}}
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 2}
        assert all([await write.finished(10) for write in writes])
        assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 0}


async def test_children_are_frozen_before_parents(
    scratch_agent: AgentFactory, tmp_path: Path, scratch: Scratch
) -> None:
    ioctls = RecordingIoctls()
    freezer = recording_freezer(tmp_path, scratch, ioctls)
    async with served(scratch_agent(freezer=freezer)) as client:
        assert await client.execute("guest-fsfreeze-freeze") == {"return": 2}
        assert ioctls.frozen == [str(scratch.xfs), str(scratch.ext4)]
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 2}


async def test_freeze_list_freezes_only_those(
    scratch_agent: AgentFactory, scratch: Scratch
) -> None:
    async with served(scratch_agent()) as client:
        reply = await client.execute(
            "guest-fsfreeze-freeze-list", {"mountpoints": [str(scratch.xfs)]}
        )
        assert reply == {"return": 1}
        frozen, free = write_to(scratch.xfs), write_to(scratch.ext4)
        assert await free.finished(5)
        assert await frozen.still_blocked(0.5)
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 1}
        assert await frozen.finished(10)
        # A bind mount names its device: that of ext4.
        reply = await client.execute(
            "guest-fsfreeze-freeze-list", {"mountpoints": [str(scratch.bind)]}
        )
        assert reply == {"return": 1}
        assert await write_to(scratch.ext4).still_blocked(0.5)
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 1}


async def test_freeze_list_ignores_what_it_cannot_freeze(
    scratch_agent: AgentFactory, scratch: Scratch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.system.fsfreeze.freezer")
    invalid = [scratch.tmpfs, scratch.base, scratch.ext4 / "shared"]
    async with served(scratch_agent()) as client:
        for path in invalid:
            reply = await client.execute(
                "guest-fsfreeze-freeze-list", {"mountpoints": [str(scratch.xfs), str(path)]}
            )
            assert reply == {"return": 1}
            assert await write_to(scratch.xfs).still_blocked(0.5)
            assert await client.execute("guest-fsfreeze-thaw") == {"return": 1}
        reply = await client.execute(
            "guest-fsfreeze-freeze-list", {"mountpoints": [str(path) for path in invalid]}
        )
        assert reply == {"return": 0}
        assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert (
        f"guest-fsfreeze-freeze-list: ignoring '{scratch.tmpfs}': a tmpfs filesystem, "
        "which cannot be frozen" in ignored
    )
    assert (
        f"guest-fsfreeze-freeze-list: ignoring '{scratch.base}': not a mounted filesystem"
        in ignored
    )


async def test_a_failure_part_way_thaws_what_was_frozen(
    scratch_agent: AgentFactory, tmp_path: Path, scratch: Scratch
) -> None:
    def fail_on_ext4(path: str) -> None:
        if path == str(scratch.ext4):
            raise OSError(errno.EIO, "Input/output error")

    ioctls = RecordingIoctls(fail_on_ext4)
    freezer = recording_freezer(tmp_path, scratch, ioctls)
    async with served(scratch_agent(freezer=freezer)) as client:
        reply = await client.execute("guest-fsfreeze-freeze")
        assert reply == error(f"failed to freeze {scratch.ext4}: Input/output error")
        assert ioctls.frozen == [str(scratch.xfs)]  # it was frozen, then thawed:
        assert await write_to(scratch.xfs).finished(5)
        assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
        assert not (tmp_path / MARKER_NAME).exists()


async def test_a_freeze_timing_out_part_way_thaws_what_was_frozen(
    scratch_agent: AgentFactory, tmp_path: Path, scratch: Scratch
) -> None:
    sent = math.inf

    def slow_xfs(path: str) -> None:
        if path == str(scratch.xfs):  # the first: hold it until the command timed out
            time.sleep(max(0.0, sent + 2 - time.monotonic()))

    ioctls = RecordingIoctls(slow_xfs)
    freezer = recording_freezer(tmp_path, scratch, ioctls, watchdog=False)
    async with served(scratch_agent(command_timeout=1.0, freezer=freezer)) as client:
        sent = time.monotonic()
        reply = await client.execute("guest-fsfreeze-freeze")
        assert reply == error("command guest-fsfreeze-freeze timed out after 1.0 s")
        # The reply did not wait for the xfs ioctl (an ioctl under way cannot be
        # interrupted): its thread was abandoned, and thaws xfs once FIFREEZE is
        # through. ext4, next, was never touched.
        with trio.fail_after(10):
            while not ioctls.frozen:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert ioctls.frozen == [str(scratch.xfs)]
        assert await write_to(scratch.xfs).finished(5)
        assert await write_to(scratch.ext4).finished(5)
        assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}


async def test_marker_lists_what_is_frozen_until_the_thaw(
    scratch_agent: AgentFactory, tmp_path: Path, scratch: Scratch
) -> None:
    marker = tmp_path / MARKER_NAME
    async with served(scratch_agent()) as client:
        assert await client.execute("guest-fsfreeze-freeze") == {"return": 2}
        assert json.loads(marker.read_text()) == [str(scratch.xfs), str(scratch.ext4)]
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 2}
        assert not marker.exists()


@pytest.mark.parametrize("marker_text", ["", "<garbage>", None], ids=["qemu-ga", "bad", "ours"])
async def test_a_marker_left_frozen_is_checked_and_thawed_at_start(
    scratch_agent: AgentFactory,
    tmp_path: Path,
    scratch: Scratch,
    marker_text: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The thaw attempt that checks the marker thaws what it finds frozen, as the
    watchdog would have done when the agent that froze it went away."""
    assert LinuxIoctls().freeze(str(scratch.ext4), None)  # as a previous agent left it
    marker = tmp_path / MARKER_NAME
    marker.write_text(json.dumps([str(scratch.ext4)]) if marker_text is None else marker_text)
    blocked = write_to(scratch.ext4)
    assert await blocked.still_blocked(0.3)
    async with served(scratch_agent()) as client:
        assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
        assert await blocked.finished(10)
        assert not marker.exists()
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 0}
    assert f"{scratch.ext4}: was frozen, thawed" in caplog.text
    if marker_text is not None:  # it does not say: every freezable mount was checked
        assert f"{scratch.xfs}: not frozen" in caplog.text


async def test_a_stale_marker_is_found_out_at_start(
    scratch_agent: AgentFactory, tmp_path: Path, scratch: Scratch, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed between writing the marker and freezing: nothing is frozen."""
    marker = tmp_path / MARKER_NAME
    gone = tmp_path / "unmounted-since"
    marker.write_text(json.dumps([str(scratch.xfs), str(scratch.ext4), str(gone)]))
    async with served(scratch_agent()) as client:
        assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
        assert await client.execute("guest-fsfreeze-freeze") == {"return": 2}
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 2}
    assert f"{scratch.xfs}: not frozen; {scratch.ext4}: not frozen; {gone}: gone" in caplog.text
    assert "starting thawed" in caplog.text


async def test_auto_thaw_after_the_timeout(scratch_agent: AgentFactory, scratch: Scratch) -> None:
    async with served(scratch_agent(thaw_timeout=0.5)) as client:
        assert await client.execute("guest-fsfreeze-freeze") == {"return": 2}
        blocked = write_to(scratch.ext4)
        assert await blocked.still_blocked(0.2)
        assert await blocked.finished(10)  # no thaw command: the timeout thawed
        with trio.fail_after(5):  # the write may finish a moment before the state
            while (await client.execute("guest-fsfreeze-status"))["return"] != "thawed":  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert await client.execute("guest-fsfreeze-thaw") == {"return": 0}


async def test_hook_runs_while_the_filesystems_take_writes(
    scratch_agent: AgentFactory, tmp_path: Path, scratch: Scratch
) -> None:
    """The hook writes to the filesystem being frozen: it would hang if it ran
    after the freeze or before the thaw."""
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$1" >> {scratch.ext4}/hook.log\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    (scratch.ext4 / "hook.log").unlink(missing_ok=True)
    async with served(scratch_agent(fsfreeze_hook=str(hook))) as client:
        with trio.fail_after(10):
            assert await client.execute("guest-fsfreeze-freeze") == {"return": 2}
            assert await client.execute("guest-fsfreeze-thaw") == {"return": 2}
    assert (scratch.ext4 / "hook.log").read_text().split() == ["freeze", "thaw"]


async def test_guard_refuses_a_path_outside_the_allow_list(
    tmp_path: Path, scratch: Scratch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tmpfs scratch mount, dropped from the list: refused before the ioctl
    (which tmpfs would refuse anyway, so a broken guard freezes nothing)."""
    refused = tmp_path / "refused"
    monkeypatch.setenv("TRIO_QGA_FREEZE_REFUSED", str(refused))  # not the suite's log
    monkeypatch.setenv("TRIO_QGA_FREEZE_ALLOW", str(scratch.ext4))
    with pytest.raises(PermissionError, match=f"FIFREEZE on {scratch.tmpfs} refused"):
        LinuxIoctls().freeze(str(scratch.tmpfs), None)
    assert refused.read_text() == f"{scratch.tmpfs}\n"


async def test_a_stale_mount_table_is_refused(
    agent_factory: AgentFactory, tmp_path: Path, scratch: Scratch
) -> None:
    """The table says xfs's device is at the ext4 mountpoint: nothing is frozen."""
    lines = scratch.mount_table.read_text().splitlines(keepends=True)
    xfs_line = next(line for line in lines if f" {scratch.xfs} " in line)
    table = tmp_path / "stale"
    table.write_text(xfs_line.replace(f" {scratch.xfs} ", f" {scratch.ext4} "))
    async with served(agent_factory(mount_table=str(table))) as client:
        reply = await client.execute("guest-fsfreeze-freeze")
        assert "error" in reply
        assert reply["error"]["desc"].startswith(
            f"failed to freeze {scratch.ext4}: mount table lists device"
        )
        assert await write_to(scratch.ext4).finished(5)
