"""Logging that waits while filesystems are frozen.

A log line written to a file on a frozen filesystem blocks the writer until
the thaw: for the agent, that means no more replies, so no thaw command can
arrive. qemu-ga drops its log while frozen; trio-qga keeps the records in
memory (up to a cap, counting what it has to drop) and writes them after the
thaw. The CLI wraps its log handler in a :class:`HoldingHandler`; the freezer
calls :func:`hold_logs` and :func:`release_logs`, which act on every such
handler of the root logger (nothing happens when there is none, as when
the agent is embedded in a program that sets up its own logging).
"""

from __future__ import annotations

import logging
import logging.handlers

MAX_HELD = 10_000  # records kept while frozen; later ones are counted and dropped


class HoldingHandler(logging.handlers.MemoryHandler):
    """Passes each record on to ``target`` at once, except while held."""

    def __init__(self, target: logging.Handler, max_held: int = MAX_HELD) -> None:
        super().__init__(capacity=max_held, target=target, flushOnClose=True)
        self.holds = 0
        self.dropped = 0

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return self.holds == 0

    def flush(self) -> None:
        """Write what is buffered, unless held: at exit (logging's shutdown flushes
        every handler), a write to a still frozen filesystem would hang the agent."""
        if not self.holds:
            super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        if self.holds and len(self.buffer) >= self.capacity:
            self.dropped += 1
            return
        super().emit(record)

    def hold(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # set by createLock()
            self.holds += 1

    def resume(self) -> None:
        """End one hold; after the last, write what was held."""
        with self.lock:  # type: ignore[union-attr]
            self.holds = max(0, self.holds - 1)
            if self.holds:
                return
            dropped, self.dropped = self.dropped, 0
        self.flush()
        if dropped:
            logging.getLogger(__name__).warning(
                "%d log records were dropped while filesystems were frozen", dropped
            )


def _holding_handlers() -> list[HoldingHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, HoldingHandler)]


def hold_logs() -> None:
    for handler in _holding_handlers():
        handler.hold()


def release_logs() -> None:
    for handler in _holding_handlers():
        handler.resume()
