"""The fsfreeze hook (``agent/system/fsfreeze/hook.py``) run by the freezer: order,
failures, a missing hook and a hook that hangs."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import psutil
import pytest
import trio
import trio.testing

from agent.errors import GenericError
from agent.system.fsfreeze.state import (
    FreezeState,
)
from tests.support.fsfreeze_fakes import (
    FAKE,
    FakeIoctls,
    fake_freezer,
)


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
    # Killed: gone, or a zombie until init reaps it. SIGKILL lands when the child
    # is next scheduled, a moment after killpg() returns on a busy machine.
    with trio.fail_after(5):
        while not killed(child):  # noqa: ASYNC110 (polling another process)
            await trio.sleep(0.01)


def killed(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
