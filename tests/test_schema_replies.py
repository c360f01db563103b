"""Every reply a handler builds, held to the schema file by an independent check.

The dispatcher validates replies too, but a drifted handler there turns into
an internal error; here the reply is validated again, strictly (exact member
names, types, no extra members), so a mismatch names the member at fault.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic_core import SchemaValidator

from agent import AgentConfig
from agent.models.builder import ModelFactory
from agent.models.schema import load_builtin
from tests.support.clients import StreamClient

DEFS = load_builtin()
FACTORY = ModelFactory(DEFS)

# Read-only commands that need no arguments: run on this machine as they are.
READ_ONLY = [
    "guest-info",
    "guest-ping",
    "guest-get-time",
    "guest-get-host-name",
    "guest-get-users",
    "guest-get-timezone",
    "guest-get-osinfo",
    "guest-get-load",
    "guest-get-cpustats",
    "guest-get-diskstats",
    "guest-get-disks",
    "guest-get-fsinfo",
    "guest-network-get-interfaces",
    "guest-network-get-route",
    "guest-get-vcpus",
    "guest-get-memory-blocks",
    "guest-get-memory-block-info",
    "guest-fsfreeze-status",
]


def _adapter(command: str) -> SchemaValidator:
    return FACTORY.command(DEFS.commands[command]).returns


@pytest.fixture
def agent_config(tmp_path: Path) -> AgentConfig:
    """This machine's real mount table, so that guest-get-fsinfo has something to say
    (read-only use: nothing here freezes)."""
    return AgentConfig(statedir=str(tmp_path), pidfile=None)


async def _checked(client: StreamClient, command: str, **arguments: Any) -> Any:
    reply = await client.execute(command, arguments or None)
    assert set(reply) == {"return"}, reply
    _adapter(command).validate_python(reply["return"], strict=True)
    return reply["return"]


@pytest.mark.parametrize("command", READ_ONLY)
async def test_read_only_reply_matches_the_schema(agent_client: StreamClient, command: str) -> None:
    await _checked(agent_client, command)


async def test_file_replies_match_the_schema(agent_client: StreamClient, tmp_path: Path) -> None:
    path = tmp_path / "data"
    handle = await _checked(agent_client, "guest-file-open", path=str(path), mode="w+")
    buf = base64.b64encode(b"hello").decode()
    await _checked(agent_client, "guest-file-write", handle=handle, **{"buf-b64": buf})
    await _checked(agent_client, "guest-file-seek", handle=handle, offset=0, whence="set")
    assert (await _checked(agent_client, "guest-file-read", handle=handle))["buf-b64"] == buf
    await _checked(agent_client, "guest-file-close", handle=handle)


async def test_exec_replies_match_the_schema(agent_client: StreamClient) -> None:
    started = await _checked(
        agent_client, "guest-exec", path="/bin/echo", arg=["hi"], **{"capture-output": True}
    )
    with trio.fail_after(60):
        while True:
            status = await _checked(agent_client, "guest-exec-status", **started)
            if status["exited"]:
                break
            await trio.sleep(0.05)
    assert base64.b64decode(status["out-data"]) == b"hi\n"


def test_a_drifted_member_is_refused() -> None:
    """The check is strict: the old names of guest-get-load would not pass."""
    with pytest.raises(ValueError, match="load1m"):
        _adapter("guest-get-load").validate_python({"load1": 0.0, "load5": 0.0, "load15": 0.0})
