"""From a decoded request to its reply event: :meth:`Dispatcher.start`, then
for a handler that may wait :meth:`Dispatcher.finish` (or both in one call,
:meth:`Dispatcher.handle`).

Every check that needs no I/O comes first: the request's shape, the command's
existence and whether it may run, and its arguments against the schema
model. Then the handler runs (an async one under the session's cancel scope,
and its own under ``--command-timeout``) and its value is checked against
the schema. Errors are translated here, at the
boundary, into the wire's classes. The reply is an event of
``agent.wire.framer``, which alone turns it into bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from pydantic_core import ValidationError

from agent.core.bulk import encode_big_payloads, has_big_payload
from agent.core.context import AgentContext
from agent.core.policy import NOT_ALLOWED, disabled
from agent.core.registry import Command
from agent.errors import CommandNotFound, GenericError, QgaError
from agent.models.builder import describe
from agent.wire.encoder import ErrorReply, Reply, RequestId, ReturnReply
from agent.wire.payload import Base64Payload
from agent.wire.request import RequestError, parse_request

log = logging.getLogger(__name__)
_NO_ARGUMENTS: dict[str, Any] = {}


_NOT_RUN = object()  # Pending.value of a handler not run yet


async def _nothing_to_do() -> None:
    pass


@dataclass(slots=True)
class Pending:
    """What is left of a request after :meth:`Dispatcher.start`: an async
    handler to run with its checked ``arguments`` or, when ``value`` is set, a
    sync handler's big payloads to encode."""

    command: Command
    arguments: dict[str, Any]
    id: RequestId
    value: object = _NOT_RUN


class Dispatcher:
    """Requests in, reply events out, in two steps: :meth:`start`, which does
    everything that cannot wait (a sync handler included) and :meth:`finish`,
    which runs what may. The session calls them for each request, and sends the
    replies already due in between; :meth:`handle` is both in one call.

    In two steps because most requests end in the first (a ping, a small read's
    checks and its error), where a coroutine of their own was one more object
    and frame each: 6.52 against 6.38 us of CPU per pipelined ping
    (``benchmarks/bench_request_path.py --rounds 10``, best round). A failure
    to send the replies due is no longer turned into the request's error
    reply: it ends the session, as any other failure to send.
    """

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def handle(
        self,
        request: object,
        before_wait: Callable[[], Awaitable[None]] = _nothing_to_do,
    ) -> Reply | None:
        """The reply to ``request`` (a decoded JSON value), or None when none is due.

        A synchronous handler runs at once, without a checkpoint; before an
        async one, which may wait, ``before_wait`` runs (the session sends the
        replies already due).
        """
        started = self.start(request)
        if not isinstance(started, Pending):
            return started
        await before_wait()
        return await self.finish(started)

    @staticmethod
    def tracing() -> bool:
        """Whether :meth:`start` should log each command it runs (debug logging
        is on). A session asks once: asked on every request, the logger cost
        0.19 us of the 6.38 of a pipelined ping (``bench_request_path``)."""
        return log.isEnabledFor(logging.DEBUG)

    def start(self, request: object, *, trace: bool = True) -> Reply | Pending | None:
        """Everything about ``request`` that needs no waiting: its shape, its
        command and whether it may run, its arguments against the schema's
        model and, for a sync handler, the handler itself. The reply (None when
        none is due), or what is left to :meth:`finish`. ``trace``: log the
        command run at debug level (see :meth:`tracing`)."""
        try:
            parsed = parse_request(request)
        except RequestError as err:
            return ErrorReply(err.error_class, err.desc, err.request_id)
        try:
            command = self._command(parsed.name)
            arguments = self._arguments(command, parsed.arguments)
        except QgaError as err:
            return ErrorReply(err.error_class, err.desc, parsed.id)
        except Exception as err:  # a bug; the session must go on all the same
            log.error("checking %s failed", parsed.name, exc_info=err)
            return ErrorReply("GenericError", f"internal error: {err}", parsed.id)
        if trace:
            log.debug("executing %s", command.name)
        if command.is_async:
            return Pending(command, arguments, parsed.id)
        try:
            value = command.function(self.ctx, **arguments)
        except Exception as err:
            return self._failed(command, err, parsed.id)
        if has_big_payload(value):  # a big read's: encoded without stalling other sessions
            return Pending(command, arguments, parsed.id, value)
        return self._reply(command, value, parsed.id)

    async def finish(self, pending: Pending) -> Reply | None:
        """The reply to a request :meth:`start` left ``pending``. The session
        first sends the replies due: the handler may wait."""
        command = pending.command
        value = pending.value
        if value is _NOT_RUN:
            try:
                self._check_still_allowed(command)
                value = await self._run_async(command, pending.arguments)
            except Exception as err:
                return self._failed(command, err, pending.id)
        if has_big_payload(value):  # a big read's: encoded without stalling other sessions
            value = await encode_big_payloads(value)
        return self._reply(command, value, pending.id)

    @staticmethod
    def _failed(command: Command, err: Exception, request_id: RequestId) -> ErrorReply:
        """The reply to a handler that raised ``err``."""
        if isinstance(err, QgaError):
            return ErrorReply(err.error_class, err.desc, request_id)
        log.error("%s failed", command.name, exc_info=err)
        return ErrorReply("GenericError", f"internal error in {command.name}: {err}", request_id)

    async def _run_async(self, command: Command, arguments: dict[str, Any]) -> object:
        """The handler's value, under ``--command-timeout`` when there is one.

        Without a timeout no cancel scope is entered: a scope costs about 10 us
        to enter and leave (trio 0.35, busy 2-core machine), and with one always
        entered the agent's CPU per MiB of 4 KiB reads was 1.25x (1.12-1.47)
        and their rate 0.83x (``benchmarks/ab.py --base fbd476c --only
        small-reads-cpu read-4k read-4k-cpu``, 5 alternating rounds). A handler
        is cancelled all the same when the agent stops: the session's scope
        covers it.
        """
        timeout = self.ctx.config.command_timeout
        if timeout is None:
            return await command.function(self.ctx, **arguments)
        with trio.move_on_after(timeout):
            return await command.function(self.ctx, **arguments)
        # Only reached when the deadline cancelled the handler.
        raise GenericError(f"command {command.name} timed out after {timeout} s")

    def _command(self, name: str) -> Command:
        command = self.ctx.registry.get(name)
        if command is None:
            raise CommandNotFound(f"The command {name} has not been found")
        frozen = not command.allowed_while_frozen and self.ctx.freezer.frozen
        reason = self.ctx.policy.disabled_reason(command, frozen)
        if reason is not None:
            raise disabled(name, reason)
        return command

    def _check_still_allowed(self, command: Command) -> None:
        """Refuse a command that may not run while frozen, if a freeze began
        (in another session) while this one sent the replies due: from the
        moment a freeze starts, every session is held to it."""
        if self.ctx.freezer.frozen and not command.allowed_while_frozen:
            raise disabled(command.name, NOT_ALLOWED)

    @staticmethod
    def _arguments(command: Command, arguments: dict[str, object]) -> dict[str, Any]:
        validator = command.models.arguments
        if validator is None:
            if arguments:
                raise GenericError(f"Parameter '{next(iter(arguments))}' is unexpected")
            return _NO_ARGUMENTS
        try:
            validated: dict[str, Any] = validator.validate_python(arguments).__dict__
            return validated
        except ValidationError as err:
            raise GenericError(describe(err)) from err

    @staticmethod
    def _reply(command: Command, value: object, request_id: RequestId) -> Reply | None:
        if not command.success_response:
            return None
        if command.returns_nothing and type(value) is dict and not value:
            return ReturnReply(value, request_id)  # {}: nothing to validate
        checked = value
        if isinstance(value, dict) and any(type(item) is Base64Payload for item in value.values()):
            checked = {
                key: Base64Payload.STAND_IN if isinstance(item, Base64Payload) else item
                for key, item in value.items()
            }
        try:
            command.models.returns.validate_python(checked)
        except (ValueError, TypeError) as err:  # ValidationError is a ValueError
            log.error("reply of %s does not match the schema: %s", command.name, err)
            return ErrorReply(
                "GenericError", f"internal error: reply of {command.name} is malformed", request_id
            )
        return ReturnReply(value, request_id, command.delimited_reply)
