"""The example plugin's handlers, on their own (the agent's suite runs it end to end)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import pytest
from trio_qga_procinfo.handlers import process_list, service_status

from agent import Agent, AgentConfig
from agent.errors import GenericError
from agent.system.executor import CommandResult


class FakeSystemctl:
    def __init__(self, result: CommandResult) -> None:
        self.result = result
        self.ran: list[list[str]] = []

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        self.ran.append(list(argv))
        return self.result


@asynccontextmanager
async def running_agent(result: CommandResult) -> AsyncIterator[tuple[Agent, FakeSystemctl]]:
    """An agent (without state directory nor plugins: the handlers are called
    directly) whose system commands give ``result``."""
    executor = FakeSystemctl(result)
    async with Agent(AgentConfig(), executor=executor) as agent:
        yield agent, executor


async def test_process_list_finds_this_process() -> None:
    async with running_agent(CommandResult(0, b"", b"")) as (agent, _):
        processes = await process_list(agent.context, None)
        mine = [p for p in processes if p["pid"] == os.getpid()]
        assert len(mine) == 1
        assert isinstance(mine[0]["rss-bytes"], int)
        assert mine[0]["rss-bytes"] > 0
        named = await process_list(agent.context, str(mine[0]["name"]))
        assert os.getpid() in {p["pid"] for p in named}
        assert await process_list(agent.context, "no-such-process-name") == []


async def test_service_status_parses_systemctl() -> None:
    output = b"LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=42\n"
    async with running_agent(CommandResult(0, output, b"")) as (agent, executor):
        status = await service_status(agent.context, "sshd.service")
        assert status == {
            "name": "sshd.service",
            "load-state": "loaded",
            "active-state": "active",
            "sub-state": "running",
            "main-pid": 42,
        }
        assert executor.ran == [
            [
                "systemctl",
                "show",
                "sshd.service",
                "--property=LoadState,ActiveState,SubState,MainPID",
            ]
        ]


async def test_service_status_refuses_option_like_names() -> None:
    async with running_agent(CommandResult(0, b"", b"")) as (agent, executor):
        with pytest.raises(GenericError, match="invalid unit name"):
            await service_status(agent.context, "--all")
        assert executor.ran == []


async def test_service_status_reports_systemctl_failure() -> None:
    async with running_agent(CommandResult(1, b"", b"Failed to connect to bus\n")) as (agent, _):
        with pytest.raises(GenericError, match="Failed to connect to bus"):
            await service_status(agent.context, "x.service")
