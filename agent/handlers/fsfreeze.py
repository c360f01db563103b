"""guest-fsfreeze-status, -freeze, -freeze-list and -thaw: the freezer's commands."""

from __future__ import annotations

from collections.abc import Sequence

from agent.core.context import AgentContext
from agent.core.policy import NOT_ALLOWED, disabled
from agent.core.registry import HandlerSet
from agent.system.fsfreeze.freezer import AlreadyFrozen

handlers = HandlerSet()


@handlers.command("guest-fsfreeze-status")
def guest_fsfreeze_status(ctx: AgentContext) -> str:
    return "frozen" if ctx.freezer.frozen else "thawed"


@handlers.command("guest-fsfreeze-freeze")
async def guest_fsfreeze_freeze(ctx: AgentContext) -> int:
    return await _freeze(ctx, "guest-fsfreeze-freeze", None)


@handlers.command("guest-fsfreeze-freeze-list")
async def guest_fsfreeze_freeze_list(ctx: AgentContext, mountpoints: list[str] | None) -> int:
    return await _freeze(ctx, "guest-fsfreeze-freeze-list", mountpoints)


async def _freeze(ctx: AgentContext, name: str, mountpoints: Sequence[str] | None) -> int:
    """A freeze that finds another under way or done (from another session) is
    refused as the dispatcher refuses any command while frozen, as qemu-ga."""
    try:
        return await ctx.freezer.freeze(mountpoints)
    except AlreadyFrozen as err:
        raise disabled(name, NOT_ALLOWED) from err


@handlers.command("guest-fsfreeze-thaw")
async def guest_fsfreeze_thaw(ctx: AgentContext) -> int:
    return await ctx.freezer.thaw()
