"""The daemon leaves its start-up objects out of the garbage collector's way
(``agent.daemon.collector``), once it is ready and before any request."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import trio

from agent import AgentConfig
from agent.daemon import cli
from agent.daemon.collector import freeze_start_up


def test_start_up_objects_go_to_the_permanent_generation() -> None:
    alive = [object()]  # a container: one the collector tracks
    assert any(item is alive for item in gc.get_objects())
    try:
        freeze_start_up()
        assert gc.get_freeze_count() >= 1
        assert not any(item is alive for item in gc.get_objects())
    finally:
        gc.unfreeze()  # the rest of the test run collects as before


async def test_the_daemon_freezes_once_ready_before_it_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    monkeypatch.setattr(cli, "freeze_start_up", lambda: said.append("frozen"))
    config = AgentConfig(statedir=str(tmp_path), transports=(f"unix-listen:{tmp_path / 's'}",))
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:

            def ready() -> None:
                said.append("ready")
                nursery.cancel_scope.cancel()

            nursery.start_soon(lambda: cli.run(config, on_ready=ready))
    assert said == ["frozen", "ready"]
