"""Read a QAPI schema file: the command and type definitions, checked for shape.

The file is QEMU's QAPI form: a sequence of single-quoted JSON objects with
``#`` comment lines. The agent's own framer reads it, since it already speaks
QEMU's dialect of JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent.protocol import Framer, Message, ParseError

BUILTIN_SCHEMA = "qga-schema.json"


class SchemaError(ValueError):
    """The schema file is malformed; the message says where."""


@dataclass(frozen=True)
class CommandDef:
    name: str
    data: dict[str, Any] | str | None  # inline members, a struct's name, or none
    returns: Any  # a type expression, or None for an empty object
    success_response: bool = True
    allowed_while_frozen: bool = False


@dataclass(frozen=True)
class SchemaDefs:
    """Every definition of one schema file, by name."""

    commands: dict[str, CommandDef] = field(default_factory=dict)
    types: dict[str, dict[str, Any]] = field(default_factory=dict)  # struct/enum/... by name


_COMMAND_KEYS = {"command", "data", "returns", "success-response", "allowed-while-frozen"}
_TYPE_KINDS = ("struct", "enum", "alternate", "union")


def load_builtin() -> SchemaDefs:
    """The agent's own schema, shipped in the package."""
    text = resources.files("agent.models").joinpath(BUILTIN_SCHEMA).read_text("utf-8")
    return parse(text, BUILTIN_SCHEMA)


def load_file(path: Path) -> SchemaDefs:
    return parse(path.read_text("utf-8"), str(path))


def parse(text: str, origin: str) -> SchemaDefs:
    """Parse QAPI schema text; ``origin`` names it in error messages."""
    body = "\n".join("" if line.lstrip().startswith("#") else line for line in text.splitlines())
    defs = SchemaDefs()
    framer = Framer()
    for event in framer.receive(body.encode("utf-8") + b"\n"):
        if isinstance(event, ParseError):
            raise SchemaError(f"{origin}: {event.reason}")
        if isinstance(event, Message):
            _add(defs, event.value, origin)
    if not framer.idle:
        raise SchemaError(f"{origin}: JSON parse error, unexpected end of file")
    return defs


def _add(defs: SchemaDefs, expr: object, origin: str) -> None:
    if not isinstance(expr, dict):
        raise SchemaError(f"{origin}: a definition must be an object, not {expr!r}")
    if "pragma" in expr:
        return  # QAPI generator directives: nothing for the agent
    if "command" in expr:
        unknown = set(expr) - _COMMAND_KEYS
        if unknown:
            raise SchemaError(f"{origin}: command {expr['command']!r}: unknown keys {unknown}")
        name = expr["command"]
        if name in defs.commands:
            raise SchemaError(f"{origin}: command {name!r} is defined twice")
        defs.commands[name] = CommandDef(
            name=name,
            data=expr.get("data"),
            returns=expr.get("returns"),
            success_response=bool(expr.get("success-response", True)),
            allowed_while_frozen=bool(expr.get("allowed-while-frozen", False)),
        )
        return
    kinds = [kind for kind in _TYPE_KINDS if kind in expr]
    if len(kinds) != 1:
        raise SchemaError(f"{origin}: not a command or a type: {expr!r}")
    name = expr[kinds[0]]
    if name in defs.types:
        raise SchemaError(f"{origin}: type {name!r} is defined twice")
    defs.types[name] = expr
