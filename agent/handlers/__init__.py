"""Command handlers, one module per group of commands."""

from agent.core.registry import HandlerSet
from agent.handlers import (
    accounts,
    core,
    disks,
    exec,
    files,
    fsfreeze,
    hardware,
    network,
    power,
    stream_exec,
    system,
)

BUILTIN: tuple[HandlerSet, ...] = (
    core.handlers,
    files.handlers,
    fsfreeze.handlers,
    system.handlers,
    network.handlers,
    disks.handlers,
    exec.handlers,
    stream_exec.handlers,
    power.handlers,
    accounts.handlers,
    hardware.handlers,
)
