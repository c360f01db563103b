"""The frozen marker (``agent/system/fsfreeze/marker.py``): written before freezing,
removed after thawing, and read back by an agent that starts frozen."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import trio

from agent.core.config import KERNEL_MOUNT_TABLE
from agent.system.fsfreeze.freezer import Freezer
from agent.system.fsfreeze.marker import MARKER_NAME
from agent.system.fsfreeze.state import (
    FreezeState,
)
from agent.system.fsguard import FsGuard
from tests.support.fsfreeze_fakes import (
    FAKE,
    FAKE_FREEZE_ORDER,
    FakeIoctls,
    fake_freezer,
)


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


async def test_started_with_our_marker_it_thaws_what_it_says(tmp_path: Path, table: Path) -> None:
    (tmp_path / MARKER_NAME).write_text(json.dumps([f"{FAKE}/data"]))
    ioctls = FakeIoctls()
    ioctls.frozen.add(f"{FAKE}/data")  # left frozen by the previous agent
    freezer = fake_freezer(tmp_path, table, ioctls)
    assert ioctls.calls == []  # building it reads nothing: starting it does
    async with trio.open_nursery() as nursery:
        await nursery.start(freezer.run)
        assert ioctls.called("thaw") == [f"{FAKE}/data"]
        assert freezer.state is FreezeState.THAWED
        assert not (tmp_path / MARKER_NAME).exists()
        nursery.cancel_scope.cancel()


async def test_started_with_qemu_gas_empty_marker_the_thaw_covers_the_table(
    tmp_path: Path, table: Path
) -> None:
    (tmp_path / MARKER_NAME).touch()
    ioctls = FakeIoctls()
    ioctls.frozen.update(FAKE_FREEZE_ORDER)
    freezer = fake_freezer(tmp_path, table, ioctls)
    async with trio.open_nursery() as nursery:
        await nursery.start(freezer.run)
        assert set(ioctls.called("thaw")) == set(FAKE_FREEZE_ORDER)
        assert not ioctls.frozen
        assert not (tmp_path / MARKER_NAME).exists()
        nursery.cancel_scope.cancel()


async def test_without_a_state_directory_no_marker_is_written(tmp_path: Path, table: Path) -> None:
    freezer = Freezer(
        None,
        mount_table=str(table),
        fs=FsGuard(math.inf, mount_table=KERNEL_MOUNT_TABLE),
        ioctls=FakeIoctls(),
        watchdog=False,
    )
    before = sorted(os.listdir(tmp_path))
    assert await freezer.freeze([f"{FAKE}/data"]) == 1
    assert freezer.frozen
    assert await freezer.thaw() == 1
    assert sorted(os.listdir(tmp_path)) == before
