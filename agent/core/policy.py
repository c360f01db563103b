"""Which commands may run now: blocked and allowed lists, gates, and the frozen state.

A command passes the filter when ``--block-rpcs`` does not name it and an
``--allow-rpcs`` list, if any, does. A command that reaches a capability a
qemu-ga command gates (the streaming exec runs programs, as guest-exec does)
names its gates in the schema (``'gated-by'``), and is enabled only when it
passes the filter *and so does every one of its gates*: all of them, not any,
since the gates are the qemu-ga commands a host needs together to do the same
(guest-exec to start a program, guest-exec-status to see its output); with
"any of", an administrator who blocked one of them would find the extension
doing it all the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.core.registry import Command
from agent.errors import CommandNotFound

# Since QEMU 9.1 qemu-ga gives this one reason for every disabled command: blocked,
# not allowed, or not allowed while frozen (7.2 said "the agent is in frozen state"
# for the last and nothing for the first).
NOT_ALLOWED = "the command is not allowed"


def disabled(name: str, reason: str) -> CommandNotFound:
    """The error of a command the filter or the frozen state disables, in qemu-ga's words."""
    return CommandNotFound(f"Command {name} has been disabled" + (f": {reason}" if reason else ""))


class PolicyError(ValueError):
    """The filter allows a command by name but blocks a gate of it."""


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

    def passes(self, name: str) -> bool:
        """The filter lets the command ``name`` through, its gates aside."""
        return name not in self.blocked and (self.allowed is None or name in self.allowed)

    def enabled(self, command: Command) -> bool:
        """The filter lets ``command`` and every one of its gates through."""
        return self.passes(command.name) and all(map(self.passes, command.gated_by))

    def disabled_reason(self, command: Command, frozen: bool) -> str | None:
        """None when ``command`` may run; else why not, in qemu-ga's (9.1 and later) words.

        On every request: ``enabled`` written out, which costs a quarter as much."""
        name = command.name
        if name in self.blocked or (self.allowed is not None and name not in self.allowed):
            return NOT_ALLOWED
        gates = command.definition.gated_by
        if gates and not all(map(self.passes, gates)):
            return NOT_ALLOWED
        if frozen and not command.allowed_while_frozen:
            return NOT_ALLOWED
        return None

    def check(self, commands: Iterable[Command]) -> None:
        """Refuse an allow-list that names a command whose gate the filter disables:
        the administrator asked for something the gate forbids, and quietly
        leaving it disabled would hide that. Without an allow-list there is
        nothing to check (and ``commands`` is not gone through)."""
        if self.allowed is None:
            return
        conflicts = [
            f"{command.name} (gated by {', '.join(self._closed_gates(command))})"
            for command in commands
            if self.passes(command.name) and not self.enabled(command)
        ]
        if conflicts:
            raise PolicyError(
                "--allow-rpcs names commands whose gates the command filter disables: "
                + ", ".join(conflicts)
                + "; allow the gates too, or leave those commands out"
            )

    def summary(self, commands: Iterable[Command]) -> str | None:
        """What the filter disables, for the log at start; None without a filter."""
        if not self.blocked and self.allowed is None:
            return None
        commands = list(commands)
        by_name = [command.name for command in commands if not self.passes(command.name)]
        by_gate: dict[tuple[str, ...], list[str]] = {}
        for command in commands:
            if self.passes(command.name) and not self.enabled(command):
                by_gate.setdefault(self._closed_gates(command), []).append(command.name)
        parts = [
            f"command filter: {len(by_name) + sum(map(len, by_gate.values()))} of"
            f" {len(commands)} commands disabled: {', '.join(by_name) or 'none'}"
        ]
        parts += [
            f"by the gates {', '.join(gates)}: {', '.join(names)}"
            for gates, names in by_gate.items()
        ]
        known = {command.name for command in commands}
        named = self.blocked | (self.allowed or frozenset())
        if unknown := sorted(named - known):
            parts.append(f"not commands of this agent: {', '.join(unknown)}")
        return "; ".join(parts)

    def _closed_gates(self, command: Command) -> tuple[str, ...]:
        return tuple(gate for gate in command.gated_by if not self.passes(gate))
