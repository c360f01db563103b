"""Does a handler's parameter annotation take every value the schema lets through?

The registry asks this of each handler parameter at start-up, so a handler
annotated ``handle: str`` for a schema ``int`` fails the build of the
registry, not a host's request. The values are those the validators built
from the schema give (``agent.models.builder``): strict builtins, enums as
``str``, structs and unions as :class:`~agent.models.struct.Struct` objects,
alternates as any of their branches, optional members possibly ``None``.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any, Union, get_args, get_origin

from agent.models.qapi import INT_RANGES
from agent.models.schema import SchemaDefs
from agent.models.struct import Struct

_BUILTIN_CLASSES: dict[str, type] = {
    "str": str,
    "bool": bool,
    "number": float,
    "null": type(None),
    "any": object,
    **dict.fromkeys(INT_RANGES, int),
}


def accepts(hint: Any, expr: object, defs: SchemaDefs, *, optional: bool = False) -> bool:
    """True when a parameter annotated ``hint`` takes every value of the QAPI
    type expression ``expr`` (and ``None`` for an ``optional`` member)."""
    if hint is Any:
        return True
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    kinds = list(_kinds(expr, defs))
    if optional:
        kinds.append((type(None), None))
    return all(
        any(_accepts_one(option, cls, element, defs) for option in options)
        for cls, element in kinds
    )


def _accepts_one(option: Any, cls: type, element: object, defs: SchemaDefs) -> bool:
    if option is Any:
        return True
    if option is None:
        option = type(None)
    origin = get_origin(option) or option
    if not isinstance(origin, type) or not issubclass(cls, origin):
        return False
    arguments = get_args(option)
    if element is not None and arguments:
        return accepts(arguments[0], element, defs)
    return True


def _kinds(expr: object, defs: SchemaDefs) -> Iterator[tuple[type, object]]:
    """The classes a validated value of ``expr`` has, each with its element type for lists."""
    if isinstance(expr, list):
        yield list, expr[0]
    elif isinstance(expr, dict):
        yield Struct, None  # an anonymous struct
    elif isinstance(expr, str) and expr in _BUILTIN_CLASSES:
        yield _BUILTIN_CLASSES[expr], None
    else:
        definition = defs.types.get(str(expr), {})
        if "enum" in definition:
            yield str, None
        elif "alternate" in definition:
            for branch in definition["data"].values():
                yield from _kinds(branch, defs)
        else:
            yield Struct, None  # a struct or a union
