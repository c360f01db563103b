"""QAPI schema definitions -> pydantic-core validators, built once and cached.

Validators are built on first use of each command, not at start-up: building
the whole schema costs more than the agent's start-up budget, and most agents
only ever see a handful of commands. They are pydantic-core schemas written
directly, the ones pydantic would compile from models: the agent answers its
first request without importing pydantic's model machinery (about 25 ms and
2 MiB of a start-up, and 36 modules read from a guest's disk). A struct's
value is a :class:`~agent.models.struct.Struct`, its members as attributes.

Validation follows QAPI's input visitor: strict types (``1.0`` is not an
integer, ``"1"`` is not a number), 64-bit integer ranges, absent optional
members (an explicit ``null`` is refused, as qemu-ga does), no extra members.
"""

from __future__ import annotations

import keyword
from functools import cached_property
from typing import Any

from pydantic_core import PydanticCustomError, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from agent.models.schema import CommandDef, SchemaDefs, SchemaError
from agent.models.struct import Struct

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
_BUILTINS: dict[str, cs.CoreSchema] = {
    "str": cs.str_schema(strict=True),
    "bool": cs.bool_schema(strict=True),
    "number": cs.float_schema(strict=True),
    "any": cs.any_schema(),
    "null": cs.none_schema(),
    **{
        name: cs.int_schema(strict=True, ge=low, le=high)
        for name, (low, high) in INT_RANGES.items()
    },
}
# The JSON kind a value of each builtin takes, for alternates and error texts.
_JSON_KIND = {"str": "string", "bool": "boolean", "number": "number", "null": "null"}
_JSON_KIND.update({name: "integer" for name in INT_RANGES})


def python_name(member: str) -> str:
    """The Python attribute and handler parameter name of a QAPI member."""
    name = member.replace("-", "_")
    return name + "_" if keyword.iskeyword(name) else name


class CommandModels:
    """The argument and return validators of one command, built on first use."""

    def __init__(self, factory: ModelFactory, command: CommandDef) -> None:
        self._factory = factory
        self._command = command

    @cached_property
    def arguments(self) -> SchemaValidator | None:
        """Validates a request's arguments into a :class:`Struct` (None: the
        command takes none)."""
        data = self._command.data
        if data is None:
            return None
        if isinstance(data, str):
            schema = self._factory.type_of(data)
            if schema["type"] != "model":
                raise SchemaError(f"{self._command.name}: 'data' must name a struct")
            return SchemaValidator(schema)
        return SchemaValidator(
            self._factory.struct(_model_name(self._command.name) + "Arguments", data)
        )

    @cached_property
    def returns(self) -> SchemaValidator:
        returns = self._command.returns
        if returns is None:
            return SchemaValidator(self._factory.struct("EmptyObject", {}))
        return SchemaValidator(self._factory.type_of(returns))


class ModelFactory:
    """Builds pydantic-core schemas for the definitions of one or more schemas."""

    def __init__(self, defs: SchemaDefs) -> None:
        self._defs = defs
        self._types: dict[str, cs.CoreSchema] = {}

    def command(self, command: CommandDef) -> CommandModels:
        return CommandModels(self, command)

    def type_of(self, expr: object) -> cs.CoreSchema:
        """The core schema of a QAPI type expression: a name or ``[name]``."""
        if isinstance(expr, list) and len(expr) == 1:
            return cs.list_schema(self.type_of(expr[0]))
        if isinstance(expr, dict):
            return self.struct("Anonymous", expr)
        if not isinstance(expr, str):
            raise SchemaError(f"not a type expression: {expr!r}")
        if expr in _BUILTINS:
            return _BUILTINS[expr]
        if expr not in self._types:
            self._types[expr] = self._build(expr)
        return self._types[expr]

    def json_kind(self, expr: object) -> str:
        """What qemu-ga calls the expected type in 'Invalid parameter type' errors."""
        if isinstance(expr, list):
            return "array"
        if isinstance(expr, str) and expr in _JSON_KIND:
            return _JSON_KIND[expr]
        definition = self._defs.types.get(expr) if isinstance(expr, str) else None
        if definition is None:
            return "any"
        if "enum" in definition:
            return "string"
        if "alternate" in definition:
            return str(expr)
        return "object"

    def _build(self, name: str) -> cs.CoreSchema:
        definition = self._defs.types.get(name)
        if definition is None:
            raise SchemaError(f"unknown type {name!r}")
        if "enum" in definition:
            return cs.literal_schema(_enum_values(definition))
        if "struct" in definition:
            unknown = set(definition) - {"struct", "data"}
            if unknown:
                raise SchemaError(f"struct {name!r}: unsupported keys {unknown}")
            return self.struct(name, definition["data"])
        if "alternate" in definition:
            return self._alternate(name, definition["data"])
        return self._union(name, definition)

    def struct(
        self, name: str, members: dict[str, Any], extra: dict[str, cs.ModelField] | None = None
    ) -> cs.ModelSchema:
        """A struct: strict, no member beyond ``members`` (and ``extra``, already
        built), optional ones None when absent; its value an instance of a new
        :class:`Struct` subclass named ``name``."""
        fields: dict[str, cs.ModelField] = {}
        for member, type_expr in members.items():
            optional = member.startswith("*")
            wire = member[1:] if optional else member
            schema = self.type_of(type_expr)
            if optional:
                schema = cs.with_default_schema(schema, default=None)
            fields[python_name(wire)] = cs.model_field(schema, validation_alias=wire)
        fields.update(extra or {})
        cls = type(name, (Struct,), {"__slots__": ()})
        return cs.model_schema(
            cls,
            cs.model_fields_schema(fields, model_name=name),
            config=cs.CoreConfig(title=name, extra_fields_behavior="forbid", strict=True),
        )

    def _alternate(self, name: str, branches: dict[str, Any]) -> cs.CoreSchema:
        """QAPI alternates pick their branch by the JSON kind of the value."""
        by_kind: dict[str, SchemaValidator] = {}
        for type_expr in branches.values():
            kind = self.json_kind(type_expr)
            by_kind[kind] = SchemaValidator(self.type_of(type_expr))
        if "integer" in by_kind:
            by_kind.setdefault("number", by_kind["integer"])

        def validate(value: object) -> object:
            validator = by_kind.get(_kind_of_value(value))
            if validator is None:
                raise PydanticCustomError("qapi_type", "expected {expected}", {"expected": name})
            try:
                return validator.validate_python(value)
            except ValidationError as err:
                first = err.errors()[0]
                raise PydanticCustomError("qapi_branch", first["msg"], {"error": first}) from None

        return cs.no_info_plain_validator_function(validate)

    def _union(self, name: str, definition: dict[str, Any]) -> cs.CoreSchema:
        base = definition.get("base")
        tag = definition.get("discriminator")
        branches: dict[str, Any] = definition.get("data", {})
        if not isinstance(base, dict) or not isinstance(tag, str) or tag not in base:
            raise SchemaError(f"union {name!r}: needs an inline 'base' holding its discriminator")
        tag_type = self._defs.types.get(base[tag], {})
        choices: dict[str, cs.CoreSchema] = {}
        for value in _enum_values(tag_type):
            members = {k: v for k, v in base.items() if k != tag}
            branch = branches.get(value)
            if branch is not None:
                branch_def = self._defs.types.get(branch, {})
                members.update(branch_def.get("data", {}))
            literal = cs.model_field(cs.literal_schema([value]), validation_alias=tag)
            choices[value] = self.struct(f"{name}_{value}", members, {python_name(tag): literal})
        return cs.tagged_union_schema(choices, discriminator=tag)


def _enum_values(definition: dict[str, Any]) -> list[str]:
    values = definition.get("data")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SchemaError(f"enum {definition.get('enum')!r}: 'data' must list strings")
    return values


def _kind_of_value(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _model_name(command: str) -> str:
    return "".join(part.capitalize() for part in command.split("-"))


# ------------------------------------------------------------ error texts --
_EXPECTED_BY_ERROR = {
    "int_type": "integer",
    "int_from_float": "integer",
    "int_parsing": "integer",
    "greater_than_equal": "integer",
    "less_than_equal": "integer",
    "string_type": "string",
    "bool_type": "boolean",
    "float_type": "number",
    "list_type": "array",
    "model_type": "object",
    "model_attributes_type": "object",
    "dict_type": "object",
}


def describe(err: ValidationError) -> str:
    """qemu-ga's wording for the first problem in ``err``."""
    first: Any = err.errors()[0]
    loc = list(first["loc"])
    if first["type"] == "qapi_branch":  # an alternate: report what its branch said
        inner = first["ctx"]["error"]
        first = {**inner, "loc": loc + list(inner["loc"])}
        loc = first["loc"]
    path = _format_path(loc)
    kind = first["type"]
    if kind == "missing":
        return f"Parameter '{path}' is missing"
    if kind == "extra_forbidden":
        return f"Parameter '{path}' is unexpected"
    if kind == "literal_error" and isinstance(first.get("input"), str):
        return f"Parameter '{path}' does not accept value '{first['input']}'"
    if kind == "qapi_type":
        return f"Invalid parameter type for '{path}', expected: {first['ctx']['expected']}"
    expected = _EXPECTED_BY_ERROR.get(kind, "string" if kind == "literal_error" else None)
    if expected is None:
        return f"Invalid parameter '{path}': {first['msg']}"
    return f"Invalid parameter type for '{path}', expected: {expected}"


def _format_path(loc: list[Any]) -> str:
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif isinstance(item, str) and not item.startswith(("literal[", "function-")):
            path += ("." if path else "") + item
    return path or "null"
