"""Check the shape of a request object, worded as qemu-ga words it (sans-IO).

A request is ``{"execute": NAME, "arguments": {...}, "id": ANY}``; the id is
optional and echoed in the reply, error replies included.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import GenericError
from agent.wire.encoder import NO_ID, RequestId

_EMPTY: dict[str, object] = {}


@dataclass(slots=True)  # not frozen: built for every request, at a third of the cost
class Request:
    name: str
    arguments: dict[str, object]
    id: RequestId


class RequestError(GenericError):
    """A malformed request; carries the id to echo, if the request had one."""

    def __init__(self, desc: str, request_id: RequestId) -> None:
        super().__init__(desc)
        self.request_id = request_id


_MEMBERS = frozenset(("execute", "arguments", "id"))


def parse_request(value: object) -> Request:
    # A well-formed request in a few C calls; anything else member by member,
    # for qemu-ga's first complaint.
    if type(value) is dict and value.keys() <= _MEMBERS:
        name = value.get("execute")
        arguments = value.get("arguments", _EMPTY)
        if type(name) is str and type(arguments) is dict:
            return Request(name, arguments, value.get("id", NO_ID))
    return _parse_member_by_member(value)


def _parse_member_by_member(value: object) -> Request:
    if not isinstance(value, dict):
        raise RequestError("QMP input must be a JSON object", NO_ID)
    request_id: RequestId = value.get("id", NO_ID)
    name: object = None
    arguments: object = _EMPTY
    for key, member in value.items():
        if key == "execute":
            if not isinstance(member, str):
                raise RequestError("QMP input member 'execute' must be a string", request_id)
            name = member
        elif key == "arguments":
            if not isinstance(member, dict):
                raise RequestError("QMP input member 'arguments' must be an object", request_id)
            arguments = member
        elif key != "id":  # exec-oob included: the guest agent has no out-of-band commands
            raise RequestError(f"QMP input member '{key}' is unexpected", request_id)
    if not isinstance(name, str):
        raise RequestError("QMP input lacks member 'execute'", request_id)
    return Request(name, arguments, request_id)  # type: ignore[arg-type]
