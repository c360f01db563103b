"""Where the log goes: standard error, a file (``-l``, appended to), or syslog
(journald's ``/dev/log`` under systemd) when the agent runs as a daemon."""

from __future__ import annotations

import logging
import os
import sys

from agent.config import AgentConfig
from agent.logholding import HoldingHandler

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SYSLOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # syslog adds time and host
SYSLOG_ADDRESS = "/dev/log"


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
    root = logging.getLogger()
    root.handlers[:] = [holding]
    root.setLevel(logging.DEBUG if config.verbose else logging.INFO)
    return holding
