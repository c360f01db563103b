"""Fixtures shared by the whole suite.

``agent_client`` serves a fresh agent on one end of an in-memory stream pair
and hands the test a client on the other end: no sockets, no processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from agent import Agent, AgentConfig
from tests.qga_client import StreamClient


@pytest.fixture
def agent_config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(statedir=str(tmp_path), pidfile=None)


@pytest.fixture
def agent(agent_config: AgentConfig) -> Agent:
    return Agent(agent_config)


@pytest.fixture
async def agent_client(agent: Agent) -> AsyncIterator[StreamClient]:
    client_end, agent_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve, agent_end)
        yield StreamClient(client_end)
        await client_end.aclose()
