"""Requests and replies in the debug log (``-v``), as qemu-ga logs what it reads.

qemu-ga logs ``read data, count: N, data: ...`` for every read; host test suites
(tp-qemu) look for that line to prove which command the agent received. Ours
logs one such line per request (``count`` is the size of the read that completed
it), one ``sent reply`` line per reply (``count``: its bytes on the wire), and
for an error reply its class and text. Unlike qemu-ga, passwords, key material
and file or process content never reach the log: the members the schema marks
secret (``'secret-arguments'``, ``'secret-returns'``) show as ``<redacted>``.
Which members those are comes from the caller (the command registry): this
layer knows JSON, never commands.

The session asks :func:`for_session` once; with debug off it gets None and
pays nothing per request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from agent.wire.encoder import NO_ID, ErrorReply, Reply
from agent.wire.payload import Base64Payload

log = logging.getLogger(__name__)

REDACTED = "<redacted>"

# A command's secret members (wire names): of its arguments, and of its return.
Secrets = Callable[[str], tuple[frozenset[str], frozenset[str]]]


def for_session(secrets: Secrets) -> WireLog | None:
    """A wire log for one session, or None when debug logging is off."""
    return WireLog(secrets) if log.isEnabledFor(logging.DEBUG) else None


class WireLog:
    """Logs one session's traffic. Requests are answered in order, so the reply
    logged next belongs to the request logged last."""

    def __init__(self, secrets: Secrets) -> None:
        self._secrets = secrets
        self._command: str | None = None

    def request(self, count: int, value: object) -> None:
        """A request just decoded; ``count``: the bytes of the read that completed it."""
        self._command = _command_of(value)
        log.debug("read data, count: %d, data: %s", count, _text(self._redacted_request(value)))

    def parse_error(self) -> None:
        """The next reply answers input that was not a request."""
        self._command = None

    def reply(self, reply: Reply, encoded: list[bytes]) -> None:
        """A reply about to be sent, and its bytes (one line, or the pieces of a big one)."""
        command = self._command or "request"
        shown: dict[str, object] = {}
        if isinstance(reply, ErrorReply):
            log.debug("%s failed: %s: %s", command, reply.error_class, reply.desc)
            if reply.id is not NO_ID:
                shown["id"] = reply.id
            shown["error"] = {"class": reply.error_class, "desc": reply.desc}
        else:
            secret = self._secrets(command)[1] if self._command else frozenset()
            shown["return"] = _without_in(reply.value, secret)
            if reply.id is not NO_ID:
                shown["id"] = reply.id
        size = sum(map(len, encoded))
        log.debug("sent reply, count: %d, data: %s", size, _text(shown))

    def _redacted_request(self, value: object) -> object:
        if not self._command or not isinstance(value, dict) or "arguments" not in value:
            return value
        secret = self._secrets(self._command)[0]
        if not secret:
            return value
        arguments = value["arguments"]
        if not isinstance(arguments, dict):  # malformed: it may hold the secret all the same
            return {**value, "arguments": REDACTED}
        return {**value, "arguments": _without(arguments, secret)}


def _command_of(value: object) -> str | None:
    if not isinstance(value, dict):
        return None
    name = value.get("execute", value.get("exec-oob"))
    return name if isinstance(name, str) else None


def _without_in(value: object, secret: frozenset[str]) -> object:
    """A return value without its secret members: those of the object, or of
    each object of a list."""
    if not secret:
        return value
    if isinstance(value, dict):
        return _without(value, secret)
    if isinstance(value, list):
        return [_without(item, secret) if isinstance(item, dict) else item for item in value]
    return value


def _without(members: dict[str, object], secret: frozenset[str]) -> dict[str, object]:
    return {key: REDACTED if key in secret else item for key, item in members.items()}


def _text(value: object) -> str:
    """JSON text for the log; a str's lone surrogates (undecodable file names) as '?'."""
    text = json.dumps(value, ensure_ascii=False, default=_payload)
    return text.encode("utf-8", "replace").decode("utf-8")


def _payload(value: object) -> str:
    """Bytes of a reply that the encoder writes as base64 (a member not marked secret)."""
    import pybase64  # with the first payload, not at start: a first reply has none

    if isinstance(value, Base64Payload):
        return pybase64.b64encode_as_string(value.data)
    raise TypeError(f"{type(value).__name__} is not JSON")
