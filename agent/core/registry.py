"""The command registry: name -> schema definition, models, handler, flags.

Handlers come in :class:`HandlerSet` objects, one per handler module (or
plugin). A handler is ``function(ctx, **arguments)``; its parameters after
``ctx`` must be exactly the schema's members (``buf-b64`` -> ``buf_b64``), and
their annotations must take every value the schema lets through; the registry
checks both when the handler is added, so a typo or a wrong type fails at
start-up rather than on a host's first call. Sync handlers are for work that cannot
block; async ones run under a cancel scope.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from agent.models.annotations import accepts
from agent.models.builder import CommandModels, ModelFactory
from agent.models.qapi import members as qapi_members
from agent.models.schema import CommandDef, SchemaDefs

HandlerFunction = Callable[..., Any]
_NO_SECRETS: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())


class HandlerSpec(NamedTuple):
    name: str
    function: HandlerFunction


class HandlerSet:
    """The handlers of one module or plugin, by command name."""

    def __init__(self) -> None:
        self.specs: dict[str, HandlerSpec] = {}

    def command(self, name: str) -> Callable[[HandlerFunction], HandlerFunction]:
        def register(function: HandlerFunction) -> HandlerFunction:
            if name in self.specs:
                raise ValueError(f"handler for {name} defined twice")
            self.specs[name] = HandlerSpec(name, function)
            return function

        return register


@dataclass(frozen=True)
class Command:
    name: str
    definition: CommandDef
    schema: SchemaDefs  # the schema that defines it: the agent's, or its plugin's
    models: CommandModels
    function: HandlerFunction
    is_async: bool
    source: str  # who provides it: "trio-qga" or a plugin's distribution
    # The schema's, copied: the dispatcher reads them on every request (a
    # property that read them from the definition cost a lookup more each).
    delimited_reply: bool
    success_response: bool
    allowed_while_frozen: bool
    returns_nothing: bool  # no 'returns' in the schema: {} is the reply

    @property
    def gated_by(self) -> tuple[str, ...]:
        return self.definition.gated_by


class RegistryError(ValueError):
    """A handler that does not fit the schema, or a name clash."""


class Registry:
    """Every command the agent serves, in registration order."""

    def __init__(self, defs: SchemaDefs) -> None:
        self._defs = defs
        self._factory = ModelFactory(defs)
        self._commands: dict[str, Command] = {}
        self._later: list[Callable[[], None]] = []  # see add_later

    def add_later(self, load: Callable[[], None]) -> None:
        """Have ``load()`` add commands (with :meth:`add`) when they are first
        needed, not now: when a command not yet registered is looked up (the
        loads before it too, not those after), when all of them are listed, or
        at :meth:`complete`. Loads run once each, in the order given; one that
        raises is not run again."""
        self._later.append(load)

    @property
    def complete_now(self) -> bool:
        """Every command is registered: no load is left for later."""
        return not self._later

    def complete(self, through: Callable[[], None] | None = None) -> None:
        """Run the loads left for later, now: all of them, or those given
        up to and including ``through`` (nothing if that one has run)."""
        if through is not None and through not in self._later:
            return
        while self._later:
            load = self._later.pop(0)
            load()
            if load is through:
                return

    def add(
        self, handlers: HandlerSet, source: str = "trio-qga", schema: SchemaDefs | None = None
    ) -> None:
        """Register every handler of ``handlers``, checked against ``schema`` (the
        registry's own by default; a plugin brings its own). All or nothing."""
        if schema is None:
            defs, factory = self._defs, self._factory
        else:
            defs, factory = schema, ModelFactory(schema)
        for spec in handlers.specs.values():
            self._check(spec, source, defs)
        for spec in handlers.specs.values():
            definition = defs.commands[spec.name]
            self._commands[spec.name] = Command(
                name=spec.name,
                definition=definition,
                schema=defs,
                models=factory.command(definition),
                function=spec.function,
                is_async=inspect.iscoroutinefunction(spec.function),
                source=source,
                delimited_reply=definition.delimited_reply,
                success_response=definition.success_response,
                allowed_while_frozen=definition.allowed_while_frozen,
                returns_nothing=definition.returns is None,
            )

    def get(self, name: str) -> Command | None:
        """Command ``name``; on a miss, the loads left for later run in order
        until one has added it (all of them for a name none adds)."""
        command = self._commands.get(name)
        while command is None and self._later:
            self._later.pop(0)()
            command = self._commands.get(name)
        return command

    def loaded(self, name: str) -> bool:
        """Whether command ``name`` is registered now: unlike :meth:`get`, this
        loads nothing."""
        return name in self._commands

    def secrets(self, name: str) -> tuple[frozenset[str], frozenset[str]]:
        """The members of command ``name`` that ``-v`` never logs: of its
        arguments, and of its return (none for a command the agent lacks)."""
        command = self.get(name)
        if command is None:
            return _NO_SECRETS
        return command.definition.secret_arguments, command.definition.secret_returns

    def __iter__(self) -> Iterator[Command]:
        self.complete()
        return iter(self._commands.values())

    def __len__(self) -> int:
        self.complete()
        return len(self._commands)

    def _check(self, spec: HandlerSpec, source: str, defs: SchemaDefs) -> None:
        definition = defs.commands.get(spec.name)
        if definition is None:
            raise RegistryError(f"{source}: {spec.name} is not in the schema")
        existing = self._commands.get(spec.name)
        if existing is not None:
            raise RegistryError(f"{source}: {spec.name} is already provided by {existing.source}")
        self._check_gates(definition, source)
        members = _members(definition, defs)
        _check_secrets(definition, defs, source)
        expected = list(members)
        parameters = list(inspect.signature(spec.function).parameters)[1:]
        if sorted(parameters) != sorted(expected):
            raise RegistryError(
                f"{source}: handler of {spec.name} takes {parameters}, schema says {expected}"
            )
        try:
            hints = typing.get_type_hints(spec.function)
        except NameError as err:  # an annotation naming what only type checkers import
            raise RegistryError(f"{source}: handler of {spec.name}: {err}") from err
        for name, (expr, optional) in members.items():
            hint = hints.get(name, Any)
            if not accepts(hint, expr, defs, optional=optional):
                shown = f"{expr}{' or None' if optional else ''}"
                raise RegistryError(
                    f"{source}: handler of {spec.name} annotates {name} as "
                    f"{_typing_repr(hint)}, schema says {shown}"
                )

    def _check_gates(self, definition: CommandDef, source: str) -> None:
        """A gate is a command of the agent's own schema with no gate of its own: a
        misspelt gate would never be named by a filter, so it would gate nothing;
        and the gates are the qemu-ga commands themselves, never other extensions."""
        for gate in definition.gated_by:
            gate_definition = self._defs.commands.get(gate)
            if gate_definition is None:
                raise RegistryError(
                    f"{source}: {definition.name} is gated by {gate},"
                    " which is not a command of the agent's own schema"
                )
            if gate_definition.gated_by:
                raise RegistryError(
                    f"{source}: {definition.name} is gated by {gate}, which is gated itself"
                    f" (by {', '.join(gate_definition.gated_by)}): name those instead"
                )


def _check_secrets(definition: CommandDef, defs: SchemaDefs, source: str) -> None:
    """Secret members must exist: a misspelt one would be logged all the same."""
    known = {name.lstrip("*") for name in _data(definition.data, defs)}
    unknown = definition.secret_arguments - known
    if unknown:
        raise RegistryError(
            f"{source}: {definition.name}: secret arguments {sorted(unknown)} are not its members"
        )
    returns = definition.returns
    if isinstance(returns, list):
        returns = returns[0]
    members = _data(returns, defs) if isinstance(returns, str | dict) else {}
    unknown = definition.secret_returns - {name.lstrip("*") for name in members}
    if unknown:
        raise RegistryError(
            f"{source}: {definition.name}: secret returns {sorted(unknown)} are not members"
            " of the struct it returns"
        )


def _data(data: object, defs: SchemaDefs) -> dict[str, Any]:
    """The members (QAPI keys) of inline ``data`` or of the struct it names."""
    if isinstance(data, str):
        data = defs.types.get(data, {}).get("data", {})
    return data if isinstance(data, dict) else {}


def _members(definition: CommandDef, defs: SchemaDefs) -> dict[str, tuple[object, bool]]:
    """The command's members by parameter name: their type, and whether optional."""
    return {
        member.name: (member.type, member.optional)
        for member in qapi_members(_data(definition.data, defs))
    }


def _typing_repr(hint: object) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)
