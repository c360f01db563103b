"""vCPU and memory block commands on a scratch copy of sysfs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.system.executor import SystemRoot
from tests.support.agents import AgentFactory
from tests.support.agents import served as serve_agent
from tests.support.clients import StreamClient
from tests.support.system_fakes import RecordingExecutor


@asynccontextmanager
async def served(make: AgentFactory, root: Path) -> AsyncIterator[StreamClient]:
    agent = make(executor=RecordingExecutor(), root=SystemRoot(root))
    async with serve_agent(agent) as client:
        yield client


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """cpu0 (no online file), cpu1 online, cpu2 offline, cpu10; memory blocks 0, 8, 9."""
    cpu = tmp_path / "sys/devices/system/cpu"
    for name, online in [("cpu0", None), ("cpu1", "1\n"), ("cpu2", "0\n"), ("cpu10", "1\n")]:
        (cpu / name).mkdir(parents=True)
        if online is not None:
            (cpu / name / "online").write_text(online)
    for other in ("cpufreq", "cpuidle"):
        (cpu / other).mkdir()
    (cpu / "online").write_text("0-1,10\n")
    memory = tmp_path / "sys/devices/system/memory"
    for index, state, removable in [
        (0, "online\n", "0\n"),
        (8, "online\n", "1\n"),
        (9, "offline\n", "1\n"),
    ]:
        (memory / f"memory{index}").mkdir(parents=True)
        (memory / f"memory{index}" / "state").write_text(state)
        (memory / f"memory{index}" / "removable").write_text(removable)
    (memory / "block_size_bytes").write_text("8000000\n")
    return tmp_path


async def test_get_vcpus(agent_factory: AgentFactory, sysfs: Path) -> None:
    async with served(agent_factory, sysfs) as client:
        reply = await client.execute("guest-get-vcpus")
    assert reply == {
        "return": [
            {"logical-id": 0, "online": True, "can-offline": False},
            {"logical-id": 1, "online": True, "can-offline": True},
            {"logical-id": 2, "online": False, "can-offline": True},
            {"logical-id": 10, "online": True, "can-offline": True},
        ]
    }


async def test_set_vcpus_writes_only_what_changes(agent_factory: AgentFactory, sysfs: Path) -> None:
    cpu = sysfs / "sys/devices/system/cpu"
    (cpu / "cpu10/online").write_text("1")  # no newline: a rewrite would show
    async with served(agent_factory, sysfs) as client:
        reply = await client.execute(
            "guest-set-vcpus",
            {
                "vcpus": [
                    {"logical-id": 1, "online": False},
                    {"logical-id": 2, "online": True},
                    {"logical-id": 0, "online": True},
                    {"logical-id": 10, "online": True, "can-offline": True},
                ]
            },
        )
    assert reply == {"return": 4}
    assert (cpu / "cpu1/online").read_text() == "0\n"
    assert (cpu / "cpu2/online").read_text() == "1\n"
    assert (cpu / "cpu10/online").read_text() == "1"


@pytest.mark.parametrize(
    ("vcpus", "reply"),
    [
        (
            [{"logical-id": 0, "online": False}],
            {"error": {"class": "GenericError", "desc": "logical processor #0 can't be offlined"}},
        ),
        (
            [{"logical-id": 1, "online": False}, {"logical-id": 0, "online": False}],
            {"return": 1},
        ),
        (
            [{"logical-id": 7, "online": True}],
            {
                "error": {
                    "class": "GenericError",
                    "desc": 'open("/sys/devices/system/cpu/cpu7/"): No such file or directory',
                }
            },
        ),
        ([], {"return": 0}),
    ],
)
async def test_set_vcpus_stops_at_the_first_failure(
    agent_factory: AgentFactory, sysfs: Path, vcpus: list[object], reply: object
) -> None:
    async with served(agent_factory, sysfs) as client:
        assert await client.execute("guest-set-vcpus", {"vcpus": vcpus}) == reply


async def test_get_memory_blocks_and_info(agent_factory: AgentFactory, sysfs: Path) -> None:
    async with served(agent_factory, sysfs) as client:
        blocks = await client.execute("guest-get-memory-blocks")
        info = await client.execute("guest-get-memory-block-info")
    assert blocks == {
        "return": [
            {"phys-index": 0, "online": True, "can-offline": False},
            {"phys-index": 8, "online": True, "can-offline": True},
            {"phys-index": 9, "online": False, "can-offline": True},
        ]
    }
    assert info == {"return": {"size": 0x8000000}}


async def test_set_memory_blocks_answers_per_block(
    agent_factory: AgentFactory, sysfs: Path
) -> None:
    memory = sysfs / "sys/devices/system/memory"
    async with served(agent_factory, sysfs) as client:
        reply = await client.execute(
            "guest-set-memory-blocks",
            {
                "mem-blks": [
                    {"phys-index": 8, "online": False},
                    {"phys-index": 9, "online": True},
                    {"phys-index": 0, "online": True},
                    {"phys-index": 5, "online": True},
                ]
            },
        )
    assert reply == {
        "return": [
            {"phys-index": 8, "response": "success"},
            {"phys-index": 9, "response": "success"},
            {"phys-index": 0, "response": "success"},
            {"phys-index": 5, "response": "not-found", "error-code": 2},
        ]
    }
    assert (memory / "memory8/state").read_text() == "offline"
    assert (memory / "memory9/state").read_text() == "online"
    assert (memory / "memory0/state").read_text() == "online\n"  # not rewritten


async def test_without_memory_blocks(agent_factory: AgentFactory, tmp_path: Path) -> None:
    async with served(agent_factory, tmp_path) as client:
        assert await client.execute("guest-get-memory-blocks") == {"return": []}
        reply = await client.execute(
            "guest-set-memory-blocks", {"mem-blks": [{"phys-index": 1, "online": True}]}
        )
        assert reply == {
            "return": [{"phys-index": 1, "response": "operation-not-supported", "error-code": 2}]
        }
        reply = await client.execute("guest-get-memory-block-info")
        assert reply["error"]["desc"] == (
            'open("/sys/devices/system/memory/"): No such file or directory'
        )
