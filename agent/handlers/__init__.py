"""Command handlers, one module per group of commands."""

from agent.handlers import core
from agent.registry import HandlerSet

BUILTIN: tuple[HandlerSet, ...] = (core.handlers,)
