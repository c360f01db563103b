"""What the freezer asks of the log: hold it while filesystems are frozen.

A log line written to a file on a frozen filesystem blocks the writer until
the thaw: for the agent, that means no more replies, so no thaw command can
arrive. qemu-ga drops its log while frozen; trio-qga keeps the records in
memory (up to a cap, counting what it has to drop) and writes them after the
thaw. The CLI wraps its log handler in a ``HoldingHandler`` (``agent.daemon.logs``) and hands
it to the agent (``Agent(log_hold=...)``), whose freezer holds and resumes
it: no process-global state, and an embedding program that sets up its own
logging wires its own :class:`LogHold`, or none.
"""

from __future__ import annotations

from typing import Protocol


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
