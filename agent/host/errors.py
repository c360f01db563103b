"""What the host side raises: a failed exchange, a timeout, an agent's error reply."""

from __future__ import annotations


class ClientError(Exception):
    """The exchange with the agent failed (connection, timeout, garbled reply)."""


class AgentTimeout(ClientError, TimeoutError):
    """No reply within the client's timeout."""


class AgentError(ClientError):
    """An error reply from the agent; ``error_class`` is QMP's class name."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class CommandNotFound(AgentError):
    """The agent does not offer the command, or it is disabled."""
