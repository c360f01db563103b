"""The keeper of QEMU and virtiofsd (``agent.host.vm.process``), with ``sleep`` standing in: the
child is stopped and reaped however the block ends, a cancel that lands while the
child is being spawned included (a boot cancelled then used to wait forever)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.host.vm import process
from agent.host.vm.process import running_child

SLEEPER = ["sleep", "100"]


async def wait_for(condition: Callable[[], object]) -> None:
    while not condition():  # noqa: ASYNC110 (a file, not a Trio event)
        await trio.sleep(0.01)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_the_child_is_stopped_when_the_block_ends(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_child(SLEEPER, inherited=[], log=tmp_path / "log") as child:
            assert alive(child.pid)
        assert child.returncode == -15  # SIGTERM, which QEMU obeys at once
        assert not alive(child.pid)


async def test_a_child_that_ignores_sigterm_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "STOP_GRACE", 0.2)
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True)\n"
        "time.sleep(100)",
    ]
    log = tmp_path / "log"
    with trio.fail_after(30):
        async with running_child(stubborn, inherited=[], log=log) as child:
            await wait_for(log.read_bytes)  # its SIGTERM handler is in place
        assert child.returncode == -9


async def test_a_cancel_while_the_child_is_spawned_still_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel lands after the child exists and before its handle is handed over:
    the block is never entered, and the child must not be left running (nor the
    thread that waits for it, which would hang the caller)."""
    real_popen = subprocess.Popen
    spawned: list[int] = []
    scope = trio.CancelScope()

    def popen_then_cancel(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real_popen(*args, **kwargs)
        spawned.append(child.pid)
        trio.from_thread.run_sync(scope.cancel)
        return child

    monkeypatch.setattr(subprocess, "Popen", popen_then_cancel)
    with trio.fail_after(30):
        with scope:
            async with running_child(SLEEPER, inherited=[], log=tmp_path / "log"):
                pytest.fail("the block ran although its start was cancelled")
        assert scope.cancelled_caught
    [pid] = spawned
    assert not alive(pid)


async def test_a_child_that_cannot_start_raises_its_error(tmp_path: Path) -> None:
    with trio.fail_after(30), pytest.RaisesGroup(FileNotFoundError):
        async with running_child(["/nonexistent/qemu"], inherited=[], log=tmp_path / "log"):
            pytest.fail("the block ran without its child")
