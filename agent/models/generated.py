"""QAPI schema definitions -> pydantic models, each made on first use.

Every struct is a :class:`pydantic.BaseModel` subclass named as in the schema
(``GuestFileRead``), its members as fields by their Python names
(``buf_b64``) with the wire names as aliases (``buf-b64``); a command's
arguments are a model of their own (``GuestFileReadArguments``); enums are
``Literal`` strings; alternates and unions are tagged unions. The models
validate as the agent does (``agent.models.qapi``): strict, no extra member,
an optional member absent rather than ``null``. An absent member is not set
(``model_fields_set``), so ``model_dump(by_alias=True, exclude_unset=True)``
gives back the agent's reply as it was.

The agent itself validates with the same core schemas written by
``agent.models.builder``, without importing pydantic's model machinery; the
client (``agent.host.client``), ``trio-qga --dump-schema`` and plugin authors
use these models.
"""

from __future__ import annotations

import functools
import warnings
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, TypeAdapter
from pydantic import create_model as _create_model

from agent.models import qapi
from agent.models.schema import CommandDef, SchemaDefs, SchemaError, load_builtin

_CONFIG = ConfigDict(extra="forbid", strict=True)
_BUILTINS: dict[str, Any] = {
    "str": Annotated[str, Strict()],
    "bool": Annotated[bool, Strict()],
    "number": Annotated[float, Strict()],
    "any": Any,
    "null": None,
    **{
        name: Annotated[int, Strict(), Ge(low), Le(high)]
        for name, (low, high) in qapi.INT_RANGES.items()
    },
}


class SchemaModels(qapi.TypeWalk[Any]):
    """The models of one schema's types and commands, each made once, when first asked for."""

    builtins = _BUILTINS

    def __init__(self, defs: SchemaDefs) -> None:
        super().__init__()
        self.defs = defs

    def command(self, name: str) -> CommandDef:
        """The definition of command ``name``; KeyError when the schema has none."""
        return self.defs.commands[name]

    @functools.cache  # noqa: B019 (one SchemaModels per schema, kept as long as its models)
    def arguments(self, command: str) -> type[BaseModel] | None:
        """The model of ``command``'s arguments (None: it takes none)."""
        data = self.command(command).data
        if data is None:
            return None
        if isinstance(data, str):
            model = self.type_of(data)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise SchemaError(f"{command}: 'data' must name a struct")
            return model
        return self._struct(qapi.arguments_name(command), qapi.members(data))

    @functools.cache  # noqa: B019
    def returns(self, command: str) -> Any:
        """The type of ``command``'s return value: a model, a list of them, ``int``..."""
        returns = self.command(command).returns
        if returns is None:
            return self._struct(qapi.EMPTY_OBJECT, [])
        return self.type_of(returns)

    @functools.cache  # noqa: B019
    def returns_adapter(self, command: str) -> TypeAdapter[Any]:
        """Validates and dumps ``command``'s return values (one adapter, reused)."""
        return TypeAdapter(self.returns(command))

    def validate_return(self, command: str, value: object) -> Any:
        """A raw return value of ``command`` (JSON) as its model."""
        return self.returns_adapter(command).validate_python(value)

    def dump_return(self, command: str, value: object) -> Any:
        """A return value of ``command`` back as JSON values, by wire names, its
        absent members absent: what the agent sent."""
        return self.returns_adapter(command).dump_python(
            value, mode="json", by_alias=True, exclude_unset=True
        )

    def json_schemas(self, command: str) -> dict[str, Any]:
        """The JSON Schemas of ``command``'s arguments (None: it takes none) and return."""
        arguments = self.arguments(command)
        return {
            "arguments": None if arguments is None else arguments.model_json_schema(by_alias=True),
            "returns": self.returns_adapter(command).json_schema(by_alias=True),
        }

    def _list_of(self, item: Any) -> Any:
        return list[item]

    def _build(self, name: str) -> Any:
        found = qapi.definition(self.defs, name)
        if "enum" in found:
            return Literal[tuple(qapi.enum_values(found))]
        if "struct" in found:
            return self._struct(name, qapi.struct_members(name, found))
        if "alternate" in found:
            branches = qapi.alternate_branches(self.defs, name, found).items()
            return Annotated[
                Union[tuple(Annotated[self.type_of(t), Tag(qtype)] for qtype, t in branches)],  # noqa: UP007
                Discriminator(
                    qapi.qtype,
                    custom_error_type=qapi.ALTERNATE_ERROR_TYPE,
                    custom_error_message=qapi.ALTERNATE_ERROR_MESSAGE,
                    custom_error_context={"expected": name},
                ),
            ]
        models = tuple(
            self._struct(branch.model, branch.members, branch)
            for branch in qapi.union_branches(self.defs, name, found)
        )
        tag = qapi.python_name(found["discriminator"])
        return Annotated[Union[models], Field(discriminator=tag)]  # noqa: UP007

    def _struct(
        self, name: str, members: list[qapi.Member], branch: qapi.UnionBranch | None = None
    ) -> type[BaseModel]:
        fields: dict[str, Any] = {}
        for member in members:
            if branch is not None and member.wire == branch.tag:
                kind: Any = Literal[branch.value]
            else:
                kind = self.type_of(member.type)
            default = Field(None if member.optional else ..., alias=member.wire)
            fields[member.name] = (kind, default)
        with warnings.catch_warnings():
            # A member may be named as a BaseModel method (``json``, ``copy``): the
            # field wins on instances, which is what a member's reader wants.
            warnings.filterwarnings("ignore", "Field name .* shadows an attribute", UserWarning)
            model: type[BaseModel] = _create_model(
                name, __config__=_CONFIG, __module__=__name__, **fields
            )
        return model


@functools.cache
def builtin_models() -> SchemaModels:
    """The models of the agent's own schema (one set, shared by every client)."""
    return SchemaModels(load_builtin())
