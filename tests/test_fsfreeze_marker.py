"""The frozen marker (``agent/fsfreeze/marker.py``): written before freezing,
removed after thawing, and read back by an agent that starts frozen."""

from __future__ import annotations

import json
from pathlib import Path

from agent.system.fsfreeze.marker import MARKER_NAME
from agent.system.fsfreeze.state import (
    FreezeState,
)
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
