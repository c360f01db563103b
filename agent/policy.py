"""Which commands may run now: blocked and allowed lists, and the frozen state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.registry import Command

FROZEN_REASON = "the agent is in frozen state"


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
        """None when ``command`` may run; else why not ("" for blocked by config)."""
        if command.name in self.blocked:
            return ""
        if self.allowed is not None and command.name not in self.allowed:
            return ""
        if frozen and not command.allowed_while_frozen:
            return FROZEN_REASON
        return None
