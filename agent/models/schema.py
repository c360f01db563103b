"""Read a QAPI schema file: the command and type definitions, checked for shape.

The file is QEMU's QAPI form: a sequence of single-quoted JSON objects with
``#`` comment lines. The agent's own framer reads it, since it already speaks
QEMU's dialect of JSON. The agent's own schema is parsed ahead of time, not at
every start: ``scripts/parse-schema`` writes its definitions as plain
JSON beside it (``tests/test_schema_parsed.py`` checks that the two agree).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent.protocol import Framer, Message, ParseError

BUILTIN_SCHEMA = "qga-schema.json"
PARSED_SCHEMA = "qga-schema.parsed.json"  # BUILTIN_SCHEMA's definitions, as plain JSON


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
    """The agent's own schema, shipped in the package (its parsed form)."""
    text = resources.files("agent.models").joinpath(PARSED_SCHEMA).read_text("utf-8")
    return definitions(json.loads(text), PARSED_SCHEMA)


def load_file(path: Path) -> SchemaDefs:
    return parse(path.read_text("utf-8"), str(path))


def parse(text: str, origin: str) -> SchemaDefs:
    """Parse QAPI schema text; ``origin`` names it in error messages."""
    return definitions(expressions(text, origin), origin)


def expressions(text: str, origin: str) -> list[object]:
    """The top-level expressions of QAPI schema text, in order."""
    body = "\n".join("" if line.lstrip().startswith("#") else line for line in text.splitlines())
    found = []
    framer = Framer()
    for event in framer.receive(body.encode("utf-8") + b"\n"):
        if isinstance(event, ParseError):
            raise SchemaError(f"{origin}: {event.reason}")
        if isinstance(event, Message):
            found.append(event.value)
    if not framer.idle:
        raise SchemaError(f"{origin}: JSON parse error, unexpected end of file")
    return found


def definitions(exprs: Iterable[object], origin: str) -> SchemaDefs:
    """The definitions of schema expressions, checked for shape."""
    defs = SchemaDefs()
    for expr in exprs:
        _add(defs, expr, origin)
    return defs


def parsed_builtin() -> str:
    """The parsed form of the agent's own schema, as ``load_builtin`` reads it."""
    text = resources.files("agent.models").joinpath(BUILTIN_SCHEMA).read_text("utf-8")
    return json.dumps(expressions(text, BUILTIN_SCHEMA), indent=1) + "\n"


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
