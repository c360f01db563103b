"""Agents for the tests, run as production runs them (``async with``).

``agent_factory(**overrides)`` builds an agent from ``agent_config`` (which
keeps the ``mount_table=os.devnull`` safety default): keywords of
:class:`agent.Agent` (``executor``, ``root``, ``clock``, ``freezer``,
``trim``, ``handlers``, ``schema``) go to the agent, the others replace
fields of the configuration. :func:`served` runs an agent and serves it on
one end of a memory stream; :func:`session` serves an agent that already
runs (a host that reconnects).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pytest
import trio
import trio.testing

from agent import Agent, AgentConfig
from agent.fsfreeze.freezer import Freezer
from agent.handlers import BUILTIN
from agent.models.schema import SchemaDefs
from agent.registry import HandlerSet
from agent.sysinfo.fstrim import Trim
from agent.system import Clock, Executor, SystemRoot
from tests.qga_client import StreamClient


class AgentFactory(Protocol):
    def __call__(
        self,
        *,
        handlers: Iterable[HandlerSet] = BUILTIN,
        schema: SchemaDefs | None = None,
        executor: Executor | None = None,
        root: SystemRoot | None = None,
        clock: Clock | None = None,
        freezer: Freezer | None = None,
        trim: Trim | None = None,
        **config: Any,
    ) -> Agent: ...


@pytest.fixture
def agent_factory(agent_config: AgentConfig) -> AgentFactory:
    def make(
        *,
        handlers: Iterable[HandlerSet] = BUILTIN,
        schema: SchemaDefs | None = None,
        executor: Executor | None = None,
        root: SystemRoot | None = None,
        clock: Clock | None = None,
        freezer: Freezer | None = None,
        trim: Trim | None = None,
        **config: Any,
    ) -> Agent:
        return Agent(
            dataclasses.replace(agent_config, **config),
            handlers=handlers,
            schema=schema,
            executor=executor,
            root=root,
            clock=clock,
            freezer=freezer,
            trim=trim,
        )

    return make


@pytest.fixture
async def agent(agent_config: AgentConfig) -> AsyncIterator[Agent]:
    """An agent of ``agent_config``, running."""
    async with Agent(agent_config) as running:
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
