"""QAPI schema definitions -> pydantic-core validators, for the agent, built on first use.

These are the core schemas pydantic compiles from the schema's models
(``agent.models.generated``), written here directly: the agent answers its
first request without importing pydantic's model machinery (about 25 ms and
2 MiB of a start-up, and 36 modules read from a guest's disk), and builds a
command's validators only when the command is first called, since most agents
only ever see a handful of commands. ``tests/test_models.py`` holds each one
equal to what pydantic compiles from the command's model, so the two cannot
drift; they differ only in the class a struct's value gets, here a
:class:`~agent.models.struct.Struct` (its members as attributes), there the
model.

Validation follows QAPI's rules (``agent.models.qapi``), with qemu-ga's error
texts (:func:`describe`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from agent.models import qapi
from agent.models.schema import CommandDef, SchemaDefs, SchemaError
from agent.models.struct import Struct

_BUILTINS: dict[str, cs.CoreSchema] = {
    "str": cs.str_schema(strict=True),
    "bool": cs.bool_schema(strict=True),
    "number": cs.float_schema(strict=True),
    "any": cs.any_schema(),
    "null": cs.none_schema(),
    **{
        name: cs.int_schema(strict=True, ge=low, le=high)
        for name, (low, high) in qapi.INT_RANGES.items()
    },
}


class CommandModels:
    """The argument and return validators of one command, built on first use."""

    def __init__(self, factory: ModelFactory, command: CommandDef) -> None:
        self._factory = factory
        self._command = command

    @cached_property
    def arguments(self) -> SchemaValidator | None:
        """Validates a request's arguments into a :class:`Struct` (None: the
        command takes none)."""
        schema = self._factory.arguments_schema(self._command)
        return None if schema is None else SchemaValidator(schema)

    @cached_property
    def returns(self) -> SchemaValidator:
        return SchemaValidator(self._factory.returns_schema(self._command))


class ModelFactory(qapi.TypeWalk[cs.CoreSchema]):
    """Builds pydantic-core schemas for the definitions of one schema."""

    builtins = _BUILTINS

    def __init__(self, defs: SchemaDefs) -> None:
        super().__init__()
        self._defs = defs

    def command(self, command: CommandDef) -> CommandModels:
        return CommandModels(self, command)

    def arguments_schema(self, command: CommandDef) -> cs.CoreSchema | None:
        data = command.data
        if data is None:
            return None
        if isinstance(data, str):
            schema = self.type_of(data)
            if schema["type"] != "model":
                raise SchemaError(f"{command.name}: 'data' must name a struct")
            return schema
        return self._struct(qapi.arguments_name(command.name), qapi.members(data))

    def returns_schema(self, command: CommandDef) -> cs.CoreSchema:
        if command.returns is None:
            return self._struct(qapi.EMPTY_OBJECT, [])
        return self.type_of(command.returns)

    def _list_of(self, item: cs.CoreSchema) -> cs.CoreSchema:
        return cs.list_schema(item)

    def _build(self, name: str) -> cs.CoreSchema:
        found = qapi.definition(self._defs, name)
        if "enum" in found:
            return cs.literal_schema(qapi.enum_values(found))
        if "struct" in found:
            return self._struct(name, qapi.struct_members(name, found))
        if "alternate" in found:
            choices = {
                qtype: self.type_of(branch)
                for qtype, branch in qapi.alternate_branches(self._defs, name, found).items()
            }
            return cs.tagged_union_schema(
                choices,
                discriminator=qapi.qtype,
                custom_error_type=qapi.ALTERNATE_ERROR_TYPE,
                custom_error_message=qapi.ALTERNATE_ERROR_MESSAGE,
                custom_error_context={"expected": name},
            )
        # As pydantic compiles a discriminated union: lax and from attributes for
        # the lookup of the discriminator's value; each branch is strict.
        return cs.tagged_union_schema(
            {
                branch.value: self._struct(branch.model, branch.members, branch)
                for branch in qapi.union_branches(self._defs, name, found)
            },
            discriminator=found["discriminator"],
            strict=False,
            from_attributes=True,
        )

    def _struct(
        self, name: str, members: list[qapi.Member], branch: qapi.UnionBranch | None = None
    ) -> cs.ModelSchema:
        """A struct: strict, no member beyond ``members``, optional ones None when
        absent; its value an instance of a new :class:`Struct` subclass named
        ``name``. In a union's ``branch``, the discriminator takes the branch's value."""
        fields: dict[str, cs.ModelField] = {}
        for member in members:
            schema: cs.CoreSchema
            if branch is not None and member.wire == branch.tag:
                schema = cs.literal_schema([branch.value])
            else:
                schema = self.type_of(member.type)
            if member.optional:
                schema = cs.with_default_schema(schema, default=None)
            fields[member.name] = cs.model_field(
                schema, validation_alias=member.wire, serialization_alias=member.wire
            )
        cls = type(name, (Struct,), {"__slots__": ()})
        return cs.model_schema(
            cls,
            cs.model_fields_schema(fields, model_name=name, computed_fields=[]),
            custom_init=False,
            root_model=False,
            config=cs.CoreConfig(title=name, extra_fields_behavior="forbid", strict=True),
        )


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
    path = _format_path(list(first["loc"]))
    kind = first["type"]
    if kind == "missing":
        return f"Parameter '{path}' is missing"
    if kind == "extra_forbidden":
        return f"Parameter '{path}' is unexpected"
    if kind == "literal_error" and isinstance(first.get("input"), str):
        return f"Parameter '{path}' does not accept value '{first['input']}'"
    if kind == qapi.ALTERNATE_ERROR_TYPE:
        return f"Invalid parameter type for '{path}', expected: {first['ctx']['expected']}"
    expected = _EXPECTED_BY_ERROR.get(kind, "string" if kind == "literal_error" else None)
    if expected is None:
        return f"Invalid parameter '{path}': {first['msg']}"
    return f"Invalid parameter type for '{path}', expected: {expected}"


def _format_path(loc: list[Any]) -> str:
    """A member's path as qemu-ga writes it; the tags of alternates' branches
    (``QTYPE_...``) are not members."""
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif isinstance(item, str) and not item.startswith(qapi.QTYPE_PREFIX):
            path += ("." if path else "") + item
    return path or "null"
