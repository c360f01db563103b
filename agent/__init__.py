"""trio-qga: a QEMU guest agent on Trio, wire-compatible with qemu-ga.

The embedding API is :class:`Agent`, :class:`AgentConfig` and
:func:`serve_stream` (``agent.core``); the host side is ``agent.host``.
Importing this package loads neither: each name is imported on first use, so
a host tool or a pytest run that never builds an agent does not load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from agent.version import VERSION

if TYPE_CHECKING:
    from agent.core.agent import Agent, serve_stream
    from agent.core.config import AgentConfig

__all__ = ["VERSION", "Agent", "AgentConfig", "serve_stream"]

_HOMES = {
    "Agent": "agent.core.agent",
    "serve_stream": "agent.core.agent",
    "AgentConfig": "agent.core.config",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
