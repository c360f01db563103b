"""Agents for the tests, run as production runs them (``async with``).

``agent_factory(**overrides)`` is how a test builds an agent: from
``agent_config`` (which keeps the ``mount_table=os.devnull`` safety default),
keywords of :class:`agent.Agent` (the seams: ``executor``, ``root``, ``clock``,
``freezer``, ``trim``, ``handlers``, ``schema``) go to the agent, the others
replace fields of the configuration. :func:`served` runs an agent and serves it
on one end of a memory stream; :func:`session` serves an agent that already
runs (a host that reconnects). Agents as processes: ``processes.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from agent import Agent, AgentConfig
from tests.support.clients import StreamClient

AgentFactory = Callable[..., Agent]
_AGENT_KEYWORDS = frozenset(inspect.signature(Agent).parameters) - {"config"}


@pytest.fixture
def agent_factory(agent_config: AgentConfig) -> AgentFactory:
    def make(**overrides: Any) -> Agent:
        keywords = {name: overrides.pop(name) for name in _AGENT_KEYWORDS & overrides.keys()}
        return Agent(dataclasses.replace(agent_config, **overrides), **keywords)

    return make


@pytest.fixture
async def agent(agent_factory: AgentFactory) -> AsyncIterator[Agent]:
    """An agent of ``agent_config``, running."""
    async with agent_factory() as running:
        yield running


@pytest.fixture
async def agent_client(agent: Agent) -> AsyncIterator[StreamClient]:
    async with session(agent) as client:
        yield client


@asynccontextmanager
async def session(agent: Agent) -> AsyncIterator[StreamClient]:
    """A client of ``agent`` (running) over a memory stream; it hangs up at the end."""
    client_end, agent_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve, agent_end)
        try:
            yield StreamClient(client_end)
        finally:
            await client_end.aclose()


@asynccontextmanager
async def served(agent: Agent) -> AsyncIterator[StreamClient]:
    """``agent`` running, and a client of it over a memory stream."""
    async with agent, session(agent) as client:
        yield client
