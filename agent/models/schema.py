"""Read a QAPI schema file: the command and type definitions, checked for shape.

The file is QEMU's QAPI form: a sequence of single-quoted JSON objects with
``#`` comment lines. The agent's own framer reads it, since it already speaks
QEMU's dialect of JSON. The agent's own schema is parsed ahead of time, not at
every start: ``scripts/parse-schema`` writes its definitions as plain JSON
beside it, with a checksum of the text they come from. A parsed form whose
checksum no longer matches the text (the text was edited since) is not used:
the text is parsed instead, and ``tests/test_schema_parsed.py`` fails until
the parsed form is written again.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from agent.wire.framer import Framer, Message, ParseError

BUILTIN_SCHEMA = "qga-schema.json"
PARSED_SCHEMA = "qga-schema.parsed.json"  # BUILTIN_SCHEMA's definitions, as plain JSON
MAX_SCHEMA_DEPTH = 64  # QAPI definitions nest a few levels; far deeper is a mistake


class SchemaError(ValueError):
    """The schema file is malformed; the message says where."""


class CommandDef(NamedTuple):
    name: str
    data: dict[str, Any] | str | None  # inline members, a struct's name, or none
    returns: Any  # a type expression, or None for an empty object
    success_response: bool = True
    allowed_while_frozen: bool = False
    # The qemu-ga commands whose capability this one reaches (our key): it is
    # enabled only while the command filter lets every one of them through.
    gated_by: tuple[str, ...] = ()
    delimited_reply: bool = False  # a 0xFF byte goes before the reply (guest-sync-delimited)
    # Members (wire names) whose values are secrets or content, never logged: of
    # the arguments, and of the returned struct (or of each struct of a returned list).
    secret_arguments: frozenset[str] = frozenset()
    secret_returns: frozenset[str] = frozenset()


class SchemaDefs(NamedTuple):
    """Every definition of one schema file, by name."""

    commands: dict[str, CommandDef]
    types: dict[str, dict[str, Any]]  # struct/enum/... by name


_COMMAND_KEYS = {
    "command",
    "data",
    "returns",
    "success-response",
    "allowed-while-frozen",
    "gated-by",
    "delimited-reply",
    "secret-arguments",
    "secret-returns",
}
_TYPE_KINDS = ("struct", "enum", "alternate", "union")


# The schema files sit beside this module, as pip installs the package. Read by
# path: importlib.resources would cost every start six modules (2 ms here, and
# files read from a guest's disk) for a package that is never run from a zip.
_HERE = Path(__file__).parent


def load_builtin() -> SchemaDefs:
    """The agent's own schema, shipped in the package."""
    text = (_HERE / BUILTIN_SCHEMA).read_text("utf-8")
    try:
        parsed: str | None = (_HERE / PARSED_SCHEMA).read_text("utf-8")
    except OSError:
        parsed = None
    return from_parsed(text, parsed)


def from_parsed(text: str, parsed: str | None) -> SchemaDefs:
    """The definitions of the agent's schema ``text``: from ``parsed``, its parsed
    form, when that was made from this very text; else parsed from the text."""
    try:
        value = json.loads(parsed) if parsed is not None else None
    except ValueError:
        value = None
    if isinstance(value, dict) and value.get("source-crc32") == _checksum(text):
        return definitions(value["definitions"], PARSED_SCHEMA)
    return parse(text, BUILTIN_SCHEMA)


def parse(text: str, origin: str) -> SchemaDefs:
    """Parse QAPI schema text; ``origin`` names it in error messages."""
    return definitions(expressions(text, origin), origin)


def expressions(text: str, origin: str) -> list[object]:
    """The top-level expressions of QAPI schema text, in order."""
    body = "\n".join("" if line.lstrip().startswith("#") else line for line in text.splitlines())
    found = []
    data = body.encode("utf-8") + b"\n"
    # The text is read whole and comes with the code (the agent's, a plugin's):
    # the caps that guard a stream only need to let it through.
    framer = Framer(max_size=len(data), max_depth=MAX_SCHEMA_DEPTH)
    for event in framer.receive(data):
        if isinstance(event, ParseError):
            raise SchemaError(f"{origin}: {event.reason}")
        if isinstance(event, Message):
            found.append(event.value)
    if not framer.idle:
        raise SchemaError(f"{origin}: JSON parse error, unexpected end of file")
    return found


def definitions(exprs: Iterable[object], origin: str) -> SchemaDefs:
    """The definitions of schema expressions, checked for shape."""
    defs = SchemaDefs({}, {})
    for expr in exprs:
        _add(defs, expr, origin)
    return defs


def parsed_builtin() -> str:
    """The parsed form of the agent's own schema, as ``load_builtin`` reads it."""
    text = (_HERE / BUILTIN_SCHEMA).read_text("utf-8")
    parsed = {"source-crc32": _checksum(text), "definitions": expressions(text, BUILTIN_SCHEMA)}
    return json.dumps(parsed, indent=1) + "\n"


def _checksum(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


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
            gated_by=_names(expr, "gated-by", "command names", origin),
            delimited_reply=bool(expr.get("delimited-reply", False)),
            secret_arguments=frozenset(_names(expr, "secret-arguments", "members", origin)),
            secret_returns=frozenset(_names(expr, "secret-returns", "members", origin)),
        )
        return
    kinds = [kind for kind in _TYPE_KINDS if kind in expr]
    if len(kinds) != 1:
        raise SchemaError(f"{origin}: not a command or a type: {expr!r}")
    name = expr[kinds[0]]
    if name in defs.types:
        raise SchemaError(f"{origin}: type {name!r} is defined twice")
    defs.types[name] = expr


def _names(expr: dict[str, Any], key: str, what: str, origin: str) -> tuple[str, ...]:
    """A command's ``key`` (``'gated-by'``, ``'secret-arguments'``...): a non-empty
    list of names, or absent. Whether the names exist is the registry's check."""
    if key not in expr:
        return ()
    names = expr[key]
    if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
        return tuple(names)
    raise SchemaError(
        f"{origin}: command {expr['command']!r}: {key!r} must be a non-empty list of"
        f" {what}, not {names!r}"
    )
