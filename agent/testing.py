"""pytest fixtures for testing against a trio-qga agent: a pytest plugin.

Installed with trio-qga (entry point ``pytest11``: ``trio_qga``), so any
project whose tests run under pytest-trio can write::

    async def test_my_tool(qga_client):
        await qga_client.ping()
        assert (await qga_client.info()).version

A test suite in a VM harness streams a guest program's output into its own log
with the client's ``run`` (the same as ``trio-qga-client run``)::

    async def test_guest_suite(qga_client):
        execution = await qga_client.run(["make", "-C", "/src", "check"])
        async for chunk in execution:        # while the program runs
            print(chunk.data.decode(errors="replace"), end="")
        assert (await execution).exitcode == 0

``qga_client`` is a :class:`agent.host.client.QgaClient` connected over an in-memory
stream to ``qga_agent``, a fresh :class:`agent.Agent` built from ``qga_config``
(state in the test's temporary directory, no pid file, no plugins, and an
empty mount table: a test that calls ``guest-fsfreeze-freeze`` must not
freeze the machine it runs on); override ``qga_config`` to configure it
(``plugins=True`` loads the installed plugins). Leaving the test stops the
agent: handles closed, filesystems thawed. Async fixtures need pytest-trio
(``trio_mode = true`` or ``@pytest.mark.trio``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from agent.core.agent import Agent
    from agent.core.config import AgentConfig
    from agent.host.client import QgaClient


@pytest.fixture
def qga_config(tmp_path: Path) -> AgentConfig:
    """The configuration of ``qga_agent``; override it to change the agent."""
    from agent.core.config import AgentConfig

    return AgentConfig(statedir=str(tmp_path), pidfile=None, mount_table=os.devnull)


@pytest.fixture
async def qga_agent(qga_config: AgentConfig) -> AsyncIterator[Agent]:
    """A running agent, stopped (handles closed, filesystems thawed) after the test."""
    from agent.core.agent import Agent

    async with Agent(qga_config) as agent:
        yield agent


@pytest.fixture
async def qga_client(qga_agent: Agent) -> AsyncIterator[QgaClient]:
    """A client connected to ``qga_agent`` over an in-memory stream, already in sync."""
    import trio
    import trio.testing

    from agent.host.client import QgaClient

    client_end, agent_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(qga_agent.serve, agent_end)
        client = QgaClient(client_end, request_timeout=30)
        await client.resync()
        yield client
        await client.aclose()
