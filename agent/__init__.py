"""trio-qga: a QEMU guest agent on Trio, wire-compatible with qemu-ga.

The embedding API is :class:`Agent` and :func:`serve_stream`; see ``agent.api``.
"""

from agent.api import Agent, serve_stream
from agent.config import AgentConfig
from agent.version import VERSION

__all__ = ["VERSION", "Agent", "AgentConfig", "serve_stream"]
