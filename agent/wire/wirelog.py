"""Requests and replies in the debug log (``-v``), as qemu-ga logs what it reads.

qemu-ga logs ``read data, count: N, data: ...`` for every read; host test suites
(tp-qemu) look for that line to prove which command the agent received. Ours
logs one such line per request (``count`` is the size of the read that completed
it), one ``sent reply`` line per reply, and for an error reply its class and
text. Unlike qemu-ga, passwords, key material and file or process content never
reach the log: their values are replaced by ``<redacted>``.

The session asks :func:`for_session` once; with debug off it gets None and
pays nothing per request.
"""

from __future__ import annotations

import json
import logging

from agent.wire.framer import DELIMITER

log = logging.getLogger(__name__)

REDACTED = "<redacted>"

# Members whose values are secrets or content, by command: in the arguments...
SECRET_ARGUMENTS: dict[str, frozenset[str]] = {
    "guest-set-user-password": frozenset({"password"}),
    "guest-ssh-add-authorized-keys": frozenset({"keys"}),
    "guest-ssh-remove-authorized-keys": frozenset({"keys"}),
    "guest-file-write": frozenset({"buf-b64"}),
    "guest-exec": frozenset({"input-data"}),
    "__io.github.trio-qga_exec-write": frozenset({"data"}),  # what is typed: passwords too
}
# ... and in the reply.
SECRET_RETURNS: dict[str, frozenset[str]] = {
    "guest-ssh-get-authorized-keys": frozenset({"keys"}),
    "guest-file-read": frozenset({"buf-b64"}),
    "guest-exec-status": frozenset({"out-data", "err-data"}),
    "__io.github.trio-qga_exec-read": frozenset({"out-data", "err-data"}),
}


def for_session() -> WireLog | None:
    """A wire log for one session, or None when debug logging is off."""
    return WireLog() if log.isEnabledFor(logging.DEBUG) else None


class WireLog:
    """Logs one session's traffic. Requests are answered in order, so the reply
    logged next belongs to the request logged last."""

    def __init__(self) -> None:
        self._command: str | None = None

    def request(self, count: int, value: object) -> None:
        """A request just decoded; ``count``: the bytes of the read that completed it."""
        self._command = _command_of(value)
        log.debug("read data, count: %d, data: %s", count, _text(_redacted_request(value)))

    def parse_error(self) -> None:
        """The next reply answers input that was not a request."""
        self._command = None

    def reply(self, reply: bytes | list[bytes]) -> None:
        """A reply about to be sent (one line, or the pieces of a big one)."""
        line = reply if isinstance(reply, bytes) else b"".join(reply)
        value = json.loads(line.removeprefix(DELIMITER))
        command = self._command or "request"
        error = value.get("error") if isinstance(value, dict) else None
        if isinstance(error, dict):
            log.debug("%s failed: %s: %s", command, error.get("class"), error.get("desc"))
        secret = SECRET_RETURNS.get(command, frozenset())
        if secret and isinstance(value, dict) and isinstance(value.get("return"), dict):
            value = {**value, "return": _without(value["return"], secret)}
        log.debug("sent reply, count: %d, data: %s", len(line), _text(value))


def _command_of(value: object) -> str | None:
    if not isinstance(value, dict):
        return None
    name = value.get("execute", value.get("exec-oob"))
    return name if isinstance(name, str) else None


def _redacted_request(value: object) -> object:
    command = _command_of(value)
    secret = SECRET_ARGUMENTS.get(command or "")
    if not secret or not isinstance(value, dict) or "arguments" not in value:
        return value
    arguments = value["arguments"]
    if not isinstance(arguments, dict):  # malformed: it may hold the secret all the same
        return {**value, "arguments": REDACTED}
    return {**value, "arguments": _without(arguments, secret)}


def _without(members: dict[str, object], secret: frozenset[str]) -> dict[str, object]:
    return {key: REDACTED if key in secret else item for key, item in members.items()}


def _text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)
