"""What the two makers of validators read from a QAPI schema, in one place.

``agent.models.builder`` writes pydantic-core schemas for the agent (no
pydantic model machinery at start-up); ``agent.models.generated`` makes the
pydantic models (the client's values, ``--dump-schema``). Both walk the schema
through these functions, and ``tests/test_models.py`` holds what pydantic
compiles from each model equal to what the builder writes.

QAPI's rules, as qemu-ga's input visitor applies them: strict types (``1.0``
is not an integer, ``"1"`` is not a number), 64-bit integer ranges, optional
members that may be absent but not ``null``, no extra members; alternates pick
their branch by the JSON type of the value (QEMU's ``QType``); unions by the
value of their discriminator member.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterator, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from agent.models.schema import SchemaDefs, SchemaError

INT_RANGES = {
    "int": (-(2**63), 2**63 - 1),
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
    "size": (0, 2**64 - 1),
}
SIMPLE_BUILTINS = ("str", "bool", "number", "any", "null")

# QEMU's QType of each builtin: the JSON type an alternate's branch takes.
_BUILTIN_QTYPES = {
    "str": "QTYPE_QSTRING",
    "bool": "QTYPE_QBOOL",
    "number": "QTYPE_QNUM",
    "null": "QTYPE_QNULL",
    **dict.fromkeys(INT_RANGES, "QTYPE_QNUM"),
}
QTYPE_PREFIX = "QTYPE_"  # the tags of alternates' branches, in the location of an error
# An alternate's error when the value's JSON type has no branch: pydantic's
# custom error of a tagged union (type, message, and the context it formats).
ALTERNATE_ERROR_TYPE = "qapi_type"
ALTERNATE_ERROR_MESSAGE = "expected {expected}"
EMPTY_OBJECT = "EmptyObject"  # the model of what a command without 'returns' gives


# NamedTuples, not dataclasses: this module is imported before the agent's
# first reply, and a frozen dataclass costs ten times more to define.
class Member(NamedTuple):
    """One member of a struct, a union branch or a command's arguments."""

    wire: str  # its name on the wire: 'buf-b64'
    name: str  # its Python name: 'buf_b64'
    type: object  # its QAPI type expression
    optional: bool


def python_name(member: str) -> str:
    """The Python attribute and handler parameter name of a QAPI member."""
    name = member.replace("-", "_")
    return name + "_" if keyword.iskeyword(name) else name


def model_name(command: str) -> str:
    """A class name from a command name: ``guest-file-read`` -> ``GuestFileRead``."""
    words = "".join(c if c.isascii() and c.isalnum() else " " for c in command).split()
    return "".join(word[:1].upper() + word[1:] for word in words)


def arguments_name(command: str) -> str:
    return model_name(command) + "Arguments"


def members(data: dict[str, Any]) -> list[Member]:
    """The members of a QAPI ``data`` object, in order (``*`` marks the optional ones)."""
    found = []
    for key, type_expr in data.items():
        optional = key.startswith("*")
        wire = key[1:] if optional else key
        found.append(Member(wire, python_name(wire), type_expr, optional))
    return found


def definition(defs: SchemaDefs, name: str) -> dict[str, Any]:
    found = defs.types.get(name)
    if found is None:
        raise SchemaError(f"unknown type {name!r}")
    return found


def struct_members(name: str, found: dict[str, Any]) -> list[Member]:
    unknown = set(found) - {"struct", "data"}
    if unknown:
        raise SchemaError(f"struct {name!r}: unsupported keys {unknown}")
    return members(found["data"])


def enum_values(found: dict[str, Any]) -> list[str]:
    values = found.get("data")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SchemaError(f"enum {found.get('enum')!r}: 'data' must list strings")
    return values


class UnionBranch(NamedTuple):
    """One branch of a flat union: the discriminator's value and every member of
    the branch in QAPI's order (the base's, the discriminator among them, then the
    branch struct's)."""

    tag: str  # the discriminator member's wire name
    value: str
    model: str  # the branch's class name
    members: list[Member]


def union_branches(defs: SchemaDefs, name: str, found: dict[str, Any]) -> Iterator[UnionBranch]:
    base = found.get("base")
    tag = found.get("discriminator")
    if not isinstance(base, dict) or not isinstance(tag, str) or tag not in base:
        raise SchemaError(f"union {name!r}: needs an inline 'base' holding its discriminator")
    branches: dict[str, Any] = found.get("data", {})
    for value in enum_values(definition(defs, base[tag])):
        data = dict(base)
        branch = branches.get(value)
        if branch is not None:
            data.update(definition(defs, branch).get("data", {}))
        yield UnionBranch(tag, value, f"{name}_{value}", members(data))


def alternate_branches(defs: SchemaDefs, name: str, found: dict[str, Any]) -> dict[str, object]:
    """An alternate's branches by QType: the type expression each JSON type goes to."""
    by_qtype: dict[str, object] = {}
    for type_expr in found["data"].values():
        qtype = qtype_of(defs, type_expr)
        if qtype in by_qtype:
            raise SchemaError(f"alternate {name!r}: two branches take {qtype}")
        by_qtype[qtype] = type_expr
    return by_qtype


def qtype_of(defs: SchemaDefs, type_expr: object) -> str:
    """The QType of a value of ``type_expr``."""
    if isinstance(type_expr, list):
        return "QTYPE_QLIST"
    if isinstance(type_expr, str) and type_expr in _BUILTIN_QTYPES:
        return _BUILTIN_QTYPES[type_expr]
    if isinstance(type_expr, str) and "enum" in definition(defs, type_expr):
        return "QTYPE_QSTRING"
    return "QTYPE_QDICT"


def qtype(value: object) -> str:
    """The QType of a JSON value: the tag by which an alternate picks its branch."""
    if value is None:
        return "QTYPE_QNULL"
    if isinstance(value, bool):
        return "QTYPE_QBOOL"
    if isinstance(value, int | float):
        return "QTYPE_QNUM"
    if isinstance(value, str):
        return "QTYPE_QSTRING"
    if isinstance(value, list):
        return "QTYPE_QLIST"
    return "QTYPE_QDICT"


T = TypeVar("T")


class TypeWalk(Generic[T]):
    """The walk over a type expression that both makers share: ``[name]``, an
    anonymous struct, a built-in type, or a named type made once, when first
    asked for. Each maker gives its own built-ins and its steps."""

    builtins: Mapping[str, T]

    def __init__(self) -> None:
        self._types: dict[str, T] = {}

    def type_of(self, expr: object) -> T:
        """What a QAPI type expression makes: a name or ``[name]``."""
        if isinstance(expr, list) and len(expr) == 1:
            return self._list_of(self.type_of(expr[0]))
        if isinstance(expr, dict):
            return self._struct("Anonymous", members(expr))
        if not isinstance(expr, str):
            raise SchemaError(f"not a type expression: {expr!r}")
        if expr in self.builtins:
            return self.builtins[expr]
        if expr not in self._types:
            self._types[expr] = self._build(expr)
        return self._types[expr]

    def _list_of(self, item: T) -> T:
        raise NotImplementedError

    def _struct(self, name: str, members: list[Member]) -> T:
        raise NotImplementedError

    def _build(self, name: str) -> T:
        raise NotImplementedError
