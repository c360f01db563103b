"""The guest-fsfreeze-* commands (``agent/handlers/fsfreeze.py``) served by an
agent on the fake ioctls: what is refused while frozen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.host.client import QgaClient
from tests.support.agents import AgentFactory, served
from tests.support.clients import StreamClient
from tests.support.fsfreeze_fakes import (
    FAKE,
    FakeIoctls,
    fake_freezer,
)


@pytest.fixture
async def fake_agent_client(
    agent_factory: AgentFactory, tmp_path: Path, table: Path
) -> AsyncIterator[StreamClient]:
    agent = agent_factory(freezer=fake_freezer(tmp_path, table, FakeIoctls()))
    async with served(agent) as client:
        yield client


async def test_commands_while_frozen(fake_agent_client: StreamClient) -> None:
    client = fake_agent_client
    assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}
    assert await client.execute("guest-fsfreeze-freeze-list", {"mountpoints": [FAKE]}) == {
        "return": 1
    }
    assert await client.execute("guest-fsfreeze-status") == {"return": "frozen"}
    for name in ("guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-file-open"):
        reply = await client.execute(name)
        assert reply == {
            "error": {
                "class": "CommandNotFound",
                "desc": f"Command {name} has been disabled: the command is not allowed",
            }
        }
    assert await client.execute("guest-sync", {"id": 1}) == {"return": 1}
    assert await client.execute("guest-fsfreeze-thaw") == {"return": 1}
    assert await client.execute("guest-fsfreeze-thaw") == {"return": 0}
    reply = await client.execute("guest-fsfreeze-freeze-list", {"mountpoints": ["/nowhere"]})
    assert reply == {"return": 0}  # ignored, as the schema says
    assert await client.execute("guest-fsfreeze-freeze-list", {"mountpoints": []}) == {"return": 0}
    assert await client.execute("guest-fsfreeze-status") == {"return": "thawed"}


async def test_the_pytest_plugins_agent_has_nothing_to_freeze(qga_client: QgaClient) -> None:
    """A downstream test suite must not freeze the machine it runs on."""
    assert await qga_client.execute("guest-fsfreeze-freeze") == 0
