"""The value of a QAPI struct once validated, without importing pydantic's model machinery."""

from __future__ import annotations


class Struct:
    """A validated struct (or union branch): its members as attributes by their
    Python names (``logical-id`` -> ``logical_id``), absent optional ones None.

    ``agent.models.builder`` makes one subclass per struct, which
    pydantic-core's validators fill in; the slots are the ones they set.
    """

    __slots__ = (
        "__dict__",
        "__pydantic_extra__",
        "__pydantic_fields_set__",
        "__pydantic_private__",
    )

    def __repr__(self) -> str:
        members = ", ".join(f"{name}={value!r}" for name, value in self.__dict__.items())
        return f"{type(self).__name__}({members})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Struct)
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value
