"""guest-fsfreeze-status, -freeze, -freeze-list and -thaw: the freezer's commands."""

from __future__ import annotations

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet

handlers = HandlerSet()


@handlers.command("guest-fsfreeze-status")
def guest_fsfreeze_status(ctx: AgentContext) -> str:
    return "frozen" if ctx.freezer.frozen else "thawed"


@handlers.command("guest-fsfreeze-freeze")
async def guest_fsfreeze_freeze(ctx: AgentContext) -> int:
    return await ctx.freezer.freeze()


@handlers.command("guest-fsfreeze-freeze-list")
async def guest_fsfreeze_freeze_list(ctx: AgentContext, mountpoints: list[str] | None) -> int:
    return await ctx.freezer.freeze(mountpoints)


@handlers.command("guest-fsfreeze-thaw")
async def guest_fsfreeze_thaw(ctx: AgentContext) -> int:
    return await ctx.freezer.thaw()
