"""Command handlers, one module per group of commands."""

from agent.handlers import accounts, core, exec, files, hardware, network, power, system
from agent.registry import HandlerSet

BUILTIN: tuple[HandlerSet, ...] = (
    core.handlers,
    files.handlers,
    system.handlers,
    network.handlers,
    exec.handlers,
    power.handlers,
    accounts.handlers,
    hardware.handlers,
)
