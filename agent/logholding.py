"""Logging that waits while filesystems are frozen.

A log line written to a file on a frozen filesystem blocks the writer until
the thaw: for the agent, that means no more replies, so no thaw command can
arrive. qemu-ga drops its log while frozen; trio-qga keeps the records in
memory (up to a cap, counting what it has to drop) and writes them after the
thaw. The CLI wraps its log handler in a :class:`HoldingHandler` and hands
it to the agent (``Agent(log_hold=...)``), whose freezer holds and resumes
it: no process-global state, and an embedding program that sets up its own
logging wires its own :class:`LogHold`, or none.
"""

from __future__ import annotations

import logging
from typing import Protocol

MAX_HELD = 10_000  # records kept while frozen; later ones are counted and dropped


class LogHold(Protocol):
    """What the freezer calls around a freeze: hold the log, then resume it."""

    def hold(self) -> None: ...

    def resume(self) -> None: ...


class NoHold:
    """The log of an agent that was given nothing to hold."""

    def hold(self) -> None:
        pass

    def resume(self) -> None:
        pass


class HoldingHandler(logging.Handler):
    """Passes each record on to ``target`` at once, except while held.

    A plain Handler rather than logging.handlers.MemoryHandler: that module
    brings pickle and the socket handlers, half a MiB of the agent's memory.
    """

    def __init__(self, target: logging.Handler, max_held: int = MAX_HELD) -> None:
        super().__init__()
        self.target = target
        self.max_held = max_held
        self.buffer: list[logging.LogRecord] = []
        self.holds = 0
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (Handler.handle).
        if not self.holds:
            self.target.handle(record)
        elif len(self.buffer) < self.max_held:
            self.buffer.append(record)
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Write what is buffered, unless held: at exit (logging's shutdown flushes
        every handler), a write to a still frozen filesystem would hang the agent."""
        with self.lock:  # type: ignore[union-attr]  # set by createLock()
            if self.holds:
                return
            held, self.buffer = self.buffer, []
            for record in held:
                self.target.handle(record)
            self.target.flush()

    def close(self) -> None:
        self.flush()
        super().close()

    def hold(self) -> None:
        with self.lock:  # type: ignore[union-attr]
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
