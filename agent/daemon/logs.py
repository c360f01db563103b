"""Where the log goes: standard error, a file (``-l``, appended to), or syslog
(journald's ``/dev/log`` under systemd) when the agent runs as a daemon; and the
handler that holds the log while filesystems are frozen (``agent.system.fsfreeze.loghold``)."""

from __future__ import annotations

import logging
import os
import sys

from agent.core.config import AgentConfig
from agent.transports.group import SESSION_TRANSPORT

# %(transport)s: " [the session's transport]" when the agent serves several.
FORMAT = "%(asctime)s %(levelname)s %(name)s%(transport)s: %(message)s"
SYSLOG_FORMAT = "%(levelname)s %(name)s%(transport)s: %(message)s"  # syslog adds time and host
SYSLOG_ADDRESS = "/dev/log"
MAX_HELD = 10_000  # records kept while frozen; later ones are counted and dropped


def setup_logging(config: AgentConfig, *, daemonized: bool = False) -> HoldingHandler:
    """Send the log where ``config`` says; debug messages with ``verbose``.

    The handler it returns is for the agent to hold while filesystems are frozen."""
    handler: logging.Handler
    if config.logfile:
        handler = logging.FileHandler(config.logfile)
        handler.setFormatter(logging.Formatter(FORMAT))
    elif daemonized:
        # Imported here only: logging.handlers brings pickle and the socket handlers.
        from logging.handlers import SysLogHandler

        syslog = SysLogHandler(SYSLOG_ADDRESS, facility=SysLogHandler.LOG_DAEMON)
        syslog.ident = f"trio-qga[{os.getpid()}]: "
        syslog.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        handler = syslog
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
    holding = HoldingHandler(handler)
    holding.addFilter(name_transport)
    root = logging.getLogger()
    root.handlers[:] = [holding]
    root.setLevel(logging.DEBUG if config.verbose else logging.INFO)
    return holding


def name_transport(record: logging.LogRecord) -> bool:
    """Give ``record`` the transport of the session that logs it (as it logs:
    a record held while frozen is written later)."""
    name = SESSION_TRANSPORT.get()
    record.transport = f" [{name}]" if name else ""
    return True


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
