"""The protocol's own commands: sync, ping and info."""

from __future__ import annotations

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.version import VERSION

handlers = HandlerSet()


@handlers.command("guest-sync")
def guest_sync(ctx: AgentContext, id: int) -> int:
    return id


@handlers.command("guest-sync-delimited")
def guest_sync_delimited(ctx: AgentContext, id: int) -> int:
    return id


@handlers.command("guest-ping")
def guest_ping(ctx: AgentContext) -> dict[str, object]:
    return {}


@handlers.command("guest-info")
def guest_info(ctx: AgentContext) -> dict[str, object]:
    frozen = ctx.freezer.frozen
    return {
        "version": VERSION,
        "supported_commands": [
            {
                "name": command.name,
                "enabled": ctx.policy.disabled_reason(command, frozen) is None,
                "success-response": command.success_response,
            }
            for command in ctx.registry
        ],
    }
