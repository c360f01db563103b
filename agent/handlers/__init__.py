"""Command handlers, one module per group of commands."""

from agent.handlers import core, files, network, system
from agent.registry import HandlerSet

BUILTIN: tuple[HandlerSet, ...] = (
    core.handlers,
    files.handlers,
    system.handlers,
    network.handlers,
)
