"""QAPI schema definitions -> pydantic models, built once and cached.

Models are built on first use of each command, not at start-up: building the
whole schema costs more than the agent's start-up budget, and most agents
only ever see a handful of commands.

Validation follows QAPI's input visitor: strict types (``1.0`` is not an
integer, ``"1"`` is not a number), 64-bit integer ranges, absent optional
members (an explicit ``null`` is refused, as qemu-ga does), no extra members.
"""

from __future__ import annotations

import keyword
from functools import cached_property
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from agent.models.schema import CommandDef, SchemaDefs, SchemaError

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
_BUILTINS: dict[str, Any] = {
    "str": StrictStr,
    "bool": StrictBool,
    "number": StrictFloat,
    "any": Any,
    "null": None,
    **{
        name: Annotated[StrictInt, Field(ge=low, le=high)]
        for name, (low, high) in INT_RANGES.items()
    },
}
# The JSON kind a value of each builtin takes, for alternates and error texts.
_JSON_KIND = {"str": "string", "bool": "boolean", "number": "number", "null": "null"}
_JSON_KIND.update({name: "integer" for name in INT_RANGES})


_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


def python_name(member: str) -> str:
    """The Python attribute and handler parameter name of a QAPI member."""
    name = member.replace("-", "_")
    return name + "_" if keyword.iskeyword(name) else name


class CommandModels:
    """The argument model and return adapter of one command, built on first use."""

    def __init__(self, factory: ModelFactory, command: CommandDef) -> None:
        self._factory = factory
        self._command = command

    @cached_property
    def arguments(self) -> type[BaseModel] | None:
        data = self._command.data
        if data is None:
            return None
        if isinstance(data, str):
            model = self._factory.type_of(data)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise SchemaError(f"{self._command.name}: 'data' must name a struct")
            return model
        return self._factory.struct(_model_name(self._command.name) + "Arguments", data)

    @cached_property
    def returns(self) -> TypeAdapter[Any]:
        returns = self._command.returns
        if returns is None:
            return TypeAdapter(_EmptyObject)
        return TypeAdapter(self._factory.type_of(returns))


class _EmptyObject(BaseModel):
    model_config = _STRICT


class ModelFactory:
    """Builds pydantic types for the definitions of one or more schemas."""

    def __init__(self, defs: SchemaDefs) -> None:
        self._defs = defs
        self._types: dict[str, Any] = {}

    def command(self, command: CommandDef) -> CommandModels:
        return CommandModels(self, command)

    def type_of(self, expr: object) -> Any:
        """The Python type of a QAPI type expression: a name or ``[name]``."""
        if isinstance(expr, list) and len(expr) == 1:
            return list[self.type_of(expr[0])]  # type: ignore[misc]
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

    def _build(self, name: str) -> Any:
        definition = self._defs.types.get(name)
        if definition is None:
            raise SchemaError(f"unknown type {name!r}")
        if "enum" in definition:
            return Literal[tuple(_enum_values(definition))]
        if "struct" in definition:
            unknown = set(definition) - {"struct", "data"}
            if unknown:
                raise SchemaError(f"struct {name!r}: unsupported keys {unknown}")
            return self.struct(name, definition["data"])
        if "alternate" in definition:
            return self._alternate(name, definition["data"])
        return self._union(name, definition)

    def struct(
        self, name: str, members: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> type[BaseModel]:
        fields: dict[str, Any] = {}
        for member, type_expr in members.items():
            optional = member.startswith("*")
            wire = member[1:] if optional else member
            annotation = self.type_of(type_expr)
            if optional:
                fields[python_name(wire)] = (annotation, Field(default=None, alias=wire))
            else:
                fields[python_name(wire)] = (annotation, Field(alias=wire))
        fields.update(extra or {})
        return create_model(name, __config__=_STRICT, **fields)

    def _alternate(self, name: str, branches: dict[str, Any]) -> Any:
        """QAPI alternates pick their branch by the JSON kind of the value."""
        by_kind: dict[str, TypeAdapter[Any]] = {}
        for type_expr in branches.values():
            kind = self.json_kind(type_expr)
            by_kind[kind] = TypeAdapter(self.type_of(type_expr))
        if "integer" in by_kind:
            by_kind.setdefault("number", by_kind["integer"])

        def validate(value: object) -> object:
            adapter = by_kind.get(_kind_of_value(value))
            if adapter is None:
                raise PydanticCustomError("qapi_type", "expected {expected}", {"expected": name})
            try:
                return adapter.validate_python(value)
            except ValidationError as err:
                first = err.errors()[0]
                raise PydanticCustomError("qapi_branch", first["msg"], {"error": first}) from None

        return Annotated[Any, PlainValidator(validate)]

    def _union(self, name: str, definition: dict[str, Any]) -> Any:
        base = definition.get("base")
        tag = definition.get("discriminator")
        branches: dict[str, Any] = definition.get("data", {})
        if not isinstance(base, dict) or not isinstance(tag, str) or tag not in base:
            raise SchemaError(f"union {name!r}: needs an inline 'base' holding its discriminator")
        tag_type = self._defs.types.get(base[tag], {})
        variants = []
        for value in _enum_values(tag_type):
            members = {k: v for k, v in base.items() if k != tag}
            branch = branches.get(value)
            if branch is not None:
                branch_def = self._defs.types.get(branch, {})
                members.update(branch_def.get("data", {}))
            extra = {python_name(tag): (Literal[value], Field(alias=tag))}
            variants.append(self.struct(f"{name}_{value}", members, extra))
        return Annotated[Union[tuple(variants)], Field(discriminator=python_name(tag))]  # noqa: UP007


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
