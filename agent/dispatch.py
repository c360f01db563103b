"""From a decoded request to the bytes of its reply.

``prepare`` is synchronous and does every check that needs no I/O: the
request's shape, the command's existence and whether it may run, and its
arguments against the schema model. ``run`` calls the handler (async ones
under a cancel scope) and encodes the reply. Errors are translated here, at
the boundary, into the wire's classes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import trio
from pydantic import ValidationError

from agent.context import AgentContext
from agent.errors import CommandNotFound, GenericError, QgaError
from agent.models.builder import describe
from agent.models.payload import Base64Payload
from agent.protocol import (
    RequestId,
    encode_error,
    encode_return,
    encode_return_parts,
)
from agent.registry import Command
from agent.request import RequestError, parse_request

log = logging.getLogger(__name__)
Reply = bytes | list[bytes]  # one line, or the pieces of a big one (sent without joining)
_NO_ARGUMENTS: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Call:
    """A request that passed every check: ready to run."""

    command: Command
    arguments: dict[str, Any]
    id: RequestId


class Dispatcher:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def prepare(self, value: object) -> Call | bytes:
        """A :class:`Call`, or the bytes of the error reply that ends the request here."""
        try:
            request = parse_request(value)
        except RequestError as err:
            return encode_error(err.error_class, err.desc, err.request_id)
        try:
            command = self._command(request.name)
            arguments = self._arguments(command, request.arguments)
        except QgaError as err:
            return encode_error(err.error_class, err.desc, request.id)
        except Exception as err:  # a bug; the session must go on all the same
            log.error("checking %s failed", request.name, exc_info=err)
            return encode_error("GenericError", f"internal error: {err}", request.id)
        return Call(command, arguments, request.id)

    def run_sync(self, call: Call) -> Reply | None:
        """Run a synchronous handler; the reply, or None when none is due."""
        try:
            value = call.command.function(self.ctx, **call.arguments)
        except QgaError as err:
            return encode_error(err.error_class, err.desc, call.id)
        except Exception as err:
            return self._internal_error(call, err)
        return self._reply(call, value)

    async def run(self, call: Call) -> Reply | None:
        """Run any handler; the reply, or None when none is due."""
        if not call.command.is_async:
            return self.run_sync(call)
        timeout = self.ctx.config.command_timeout
        try:
            with trio.CancelScope(
                deadline=math.inf if timeout is None else trio.current_time() + timeout
            ) as scope:
                value = await call.command.function(self.ctx, **call.arguments)
            if scope.cancelled_caught:
                raise GenericError(f"command {call.command.name} timed out after {timeout} s")
        except QgaError as err:
            return encode_error(err.error_class, err.desc, call.id)
        except Exception as err:
            return self._internal_error(call, err)
        return self._reply(call, value)

    def _command(self, name: str) -> Command:
        command = self.ctx.registry.get(name)
        if command is None:
            raise CommandNotFound(f"The command {name} has not been found")
        reason = self.ctx.policy.disabled_reason(command, self.ctx.state.frozen)
        if reason is not None:
            raise CommandNotFound(
                f"Command {name} has been disabled" + (f": {reason}" if reason else "")
            )
        return command

    @staticmethod
    def _arguments(command: Command, arguments: dict[str, object]) -> dict[str, Any]:
        model = command.models.arguments
        if model is None:
            if arguments:
                raise GenericError(f"Parameter '{next(iter(arguments))}' is unexpected")
            return _NO_ARGUMENTS
        try:
            return model.model_validate(arguments).__dict__
        except ValidationError as err:
            raise GenericError(describe(err)) from err

    def _reply(self, call: Call, value: object) -> Reply | None:
        command = call.command
        if not command.success_response:
            return None
        if command.definition.returns is None and type(value) is dict and not value:
            return encode_return(value, call.id)  # {}: nothing to validate
        try:
            if isinstance(value, dict) and any(
                isinstance(item, Base64Payload) for item in value.values()
            ):
                command.models.returns.validate_python(
                    {
                        key: Base64Payload.STAND_IN if isinstance(item, Base64Payload) else item
                        for key, item in value.items()
                    }
                )
                return encode_return_parts(value, call.id)
            command.models.returns.validate_python(value)
            return encode_return(value, call.id, delimited=command.delimited_reply)
        except (ValueError, TypeError) as err:  # ValidationError is a ValueError
            log.error("reply of %s does not match the schema: %s", command.name, err)
            return encode_error(
                "GenericError", f"internal error: reply of {command.name} is malformed", call.id
            )

    @staticmethod
    def _internal_error(call: Call, err: Exception) -> bytes:
        log.error("%s failed", call.command.name, exc_info=err)
        return encode_error(
            "GenericError", f"internal error in {call.command.name}: {err}", call.id
        )
