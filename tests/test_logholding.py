"""The log handler that holds records while filesystems are frozen
(``agent.daemon.logs``)."""

from __future__ import annotations

import logging

import pytest

from agent.daemon.logs import HoldingHandler
from tests.support.fsfreeze_fakes import (
    ListHandler,
)


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


def test_closing_writes_what_is_held_only_once_resumed() -> None:
    target = ListHandler()
    handler = HoldingHandler(target)
    record = logging.LogRecord("test", logging.WARNING, __file__, 1, "late", None, None)
    handler.hold()
    handler.handle(record)
    handler.close()  # logging's shutdown, still frozen: nothing is written
    assert target.messages == []
    handler.resume()
    assert target.messages == ["late"]
