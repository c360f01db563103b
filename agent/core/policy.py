"""Which commands may run now: blocked and allowed lists, and the frozen state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.core.registry import Command

# Since QEMU 9.1 qemu-ga gives this one reason for every disabled command: blocked,
# not allowed, or not allowed while frozen (7.2 said "the agent is in frozen state"
# for the last and nothing for the first).
NOT_ALLOWED = "the command is not allowed"


@dataclass(frozen=True)
class CommandPolicy:
    """qemu-ga's ``--block-rpcs`` / ``--allow-rpcs``: the rules a host cannot change."""

    blocked: frozenset[str] = frozenset()
    allowed: frozenset[str] | None = None  # None: every command not blocked

    @classmethod
    def from_lists(
        cls, blocked: Iterable[str] = (), allowed: Iterable[str] | None = None
    ) -> CommandPolicy:
        return cls(frozenset(blocked), None if allowed is None else frozenset(allowed))

    def disabled_reason(self, command: Command, frozen: bool) -> str | None:
        """None when ``command`` may run; else why not, in qemu-ga's (9.1 and later) words."""
        if command.name in self.blocked:
            return NOT_ALLOWED
        if self.allowed is not None and command.name not in self.allowed:
            return NOT_ALLOWED
        if frozen and not command.allowed_while_frozen:
            return NOT_ALLOWED
        return None
