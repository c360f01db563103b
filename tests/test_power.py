"""guest-shutdown, guest-suspend-* and guest-set-time, observed through the seams.

Nothing here runs a command or sets a clock: the executor records, the clock
is fake, and /sys/power lives in a scratch root.
"""

from __future__ import annotations

import errno
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent import AgentConfig
from agent.system.executor import CommandResult, SystemRoot
from tests.support.agents import AgentFactory
from tests.support.agents import served as serve_agent
from tests.support.clients import Reply, StreamClient
from tests.support.system_fakes import OK, FakeClock, RecordingExecutor, exited

SHUTDOWN = ("/sbin/shutdown", "-h")
WHEN = ("+0", "hypervisor initiated shutdown")


@asynccontextmanager
async def served(
    make: AgentFactory,
    executor: RecordingExecutor,
    root: Path | None = None,
    clock: FakeClock | None = None,
    **config: Any,
) -> AsyncIterator[StreamClient]:
    """An agent of ``make`` with ``config``, on the fakes (a scratch ``root``)."""
    agent = make(
        executor=executor,
        root=SystemRoot(root) if root else None,
        clock=clock or FakeClock(),
        **config,
    )
    async with serve_agent(agent) as client:
        yield client


@pytest.mark.parametrize(
    ("mode", "flag"), [(None, "-P"), ("powerdown", "-P"), ("halt", "-H"), ("reboot", "-r")]
)
async def test_shutdown_runs_qemu_gas_command_and_sends_no_reply(
    agent_factory: AgentFactory, mode: str | None, flag: str, tmp_path: Path
) -> None:
    executor = RecordingExecutor(default=OK)
    async with served(agent_factory, executor, root=tmp_path) as client:  # no /sbin/poweroff
        arguments = {} if mode is None else {"mode": mode}
        await client.send(
            json.dumps({"execute": "guest-shutdown", "arguments": arguments}).encode()
        )
        await client.expect_silence()
        assert await client.execute("guest-ping") == {"return": {}}
    assert executor.commands == [(*SHUTDOWN, flag, *WHEN)]


@pytest.mark.parametrize(
    ("mode", "command"), [(None, "poweroff"), ("halt", "halt"), ("reboot", "reboot")]
)
async def test_shutdown_runs_the_modes_own_command_when_present(
    agent_factory: AgentFactory, mode: str | None, command: str, tmp_path: Path
) -> None:
    """As qemu-ga 10.2: a BusyBox guest has /sbin/poweroff, halt and reboot, no shutdown."""
    (tmp_path / "sbin").mkdir()
    for name in ("poweroff", "halt", "reboot"):
        (tmp_path / "sbin" / name).touch(mode=0o755)
    executor = RecordingExecutor(default=OK)
    async with served(agent_factory, executor, root=tmp_path) as client:
        arguments = {} if mode is None else {"mode": mode}
        await client.send(
            json.dumps({"execute": "guest-shutdown", "arguments": arguments}).encode()
        )
        assert await client.execute("guest-ping") == {"return": {}}
    assert executor.commands == [(f"/sbin/{command}",)]


async def test_shutdown_commands_are_configurable(agent_factory: AgentFactory) -> None:
    executor = RecordingExecutor(default=OK)
    poweroff = ("busybox", "poweroff", "-f")
    async with served(agent_factory, executor, poweroff_command=poweroff) as client:
        await client.send(b'{"execute":"guest-shutdown"}')
        assert await client.execute("guest-ping") == {"return": {}}
    assert executor.commands == [("busybox", "poweroff", "-f")]


async def test_shutdown_with_a_bad_mode(agent_factory: AgentFactory) -> None:
    executor = RecordingExecutor(default=OK)
    async with served(agent_factory, executor) as client:
        reply = await client.execute("guest-shutdown", {"mode": "sleep"})
    assert reply["error"]["desc"] == "mode is invalid (valid values are: halt|powerdown|reboot"
    assert executor.commands == []


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (exited(1, b"Failed to talk to init"), "child process has failed to shutdown: "),
        (CommandResult(-9, b"", b""), "child process has terminated abnormally: "),
    ],
)
async def test_a_failed_shutdown_is_an_error_reply(
    agent_factory: AgentFactory, result: CommandResult, text: str
) -> None:
    async with served(agent_factory, RecordingExecutor(default=result)) as client:
        reply = await client.execute("guest-shutdown")
    assert reply["error"]["desc"].startswith(text)


async def test_a_missing_shutdown_program_is_an_error_reply(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    async with served(agent_factory, RecordingExecutor(), root=tmp_path) as client:
        reply = await client.execute("guest-shutdown", {"mode": "halt"})
    assert reply["error"]["desc"] == (
        "child process has failed to shutdown: cannot run /sbin/shutdown: No such file or directory"
    )


# --- suspend --------------------------------------------------------------------


def power_root(tmp_path: Path, state: str | None, disk: str | None = None) -> Path:
    root = tmp_path / "root"
    power = root / "sys" / "power"
    power.mkdir(parents=True)
    if state is not None:
        (power / "state").write_text(state)
    if disk is not None:
        (power / "disk").write_text(disk)
    return root


async def suspend(
    make: AgentFactory, executor: RecordingExecutor, root: Path, command: str, **config: Any
) -> Reply:
    """Send ``command``, then a guest-sync: the first reply is the command's, if any."""
    async with served(make, executor, root, **config) as client:
        await client.send(json.dumps({"execute": command}).encode())
        return await client.execute("guest-sync", {"id": 7})


@pytest.mark.parametrize(
    ("command", "unit", "verb"),
    [
        ("guest-suspend-ram", "systemd-suspend", "suspend"),
        ("guest-suspend-disk", "systemd-hibernate", "hibernate"),
        ("guest-suspend-hybrid", "systemd-hybrid-sleep", "hybrid-sleep"),
    ],
)
async def test_suspend_through_systemd(
    agent_factory: AgentFactory, tmp_path: Path, command: str, unit: str, verb: str
) -> None:
    executor = RecordingExecutor({("systemctl", "status"): exited(3), ("systemctl", verb): OK})
    root = power_root(tmp_path, "freeze mem disk")
    reply = await suspend(agent_factory, executor, root, command)
    assert reply == {"return": 7}  # no reply of its own: success
    assert executor.commands == [("systemctl", "status", unit), ("systemctl", verb)]
    assert (root / "sys/power/state").read_text() == "freeze mem disk"  # untouched


async def test_suspend_through_pm_utils_without_systemd(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    executor = RecordingExecutor(
        {("systemctl",): exited(4), ("pm-is-supported",): OK, ("pm-suspend",): OK}
    )
    reply = await suspend(agent_factory, executor, power_root(tmp_path, "mem"), "guest-suspend-ram")
    assert reply == {"return": 7}
    assert executor.commands == [
        ("systemctl", "status", "systemd-suspend"),
        ("pm-is-supported", "--suspend"),
        ("pm-suspend",),
    ]


@pytest.mark.parametrize(
    ("command", "written"), [("guest-suspend-ram", "mem"), ("guest-suspend-disk", "disk")]
)
async def test_suspend_through_sys_power_state(
    agent_factory: AgentFactory, tmp_path: Path, command: str, written: str
) -> None:
    root = power_root(tmp_path, "freeze mem disk")
    executor = RecordingExecutor()  # neither systemctl nor pm-utils installed
    reply = await suspend(agent_factory, executor, root, command)
    assert reply == {"return": 7}
    assert (root / "sys/power/state").read_text() == written


async def test_hybrid_through_sys_power_disk(agent_factory: AgentFactory, tmp_path: Path) -> None:
    root = power_root(tmp_path, "mem disk", "[platform] shutdown reboot suspend")
    reply = await suspend(agent_factory, RecordingExecutor(), root, "guest-suspend-hybrid")
    assert reply == {"return": 7}
    assert (root / "sys/power/disk").read_text() == "suspend"
    assert (root / "sys/power/state").read_text() == "disk"


@pytest.mark.parametrize(
    ("state", "disk", "command"),
    [
        ("freeze mem", None, "guest-suspend-disk"),
        ("freeze disk", None, "guest-suspend-ram"),
        ("mem disk", "[platform] shutdown", "guest-suspend-hybrid"),
        (None, None, "guest-suspend-ram"),
    ],
)
async def test_unsupported_suspend(
    agent_factory: AgentFactory, tmp_path: Path, state: str | None, disk: str | None, command: str
) -> None:
    root = power_root(tmp_path, state, disk)
    async with served(agent_factory, RecordingExecutor(), root) as client:
        reply = await client.execute(command)
    assert reply["error"]["desc"] == "the requested suspend mode is not supported by the guest"


async def test_a_failing_way_hands_over_to_the_next(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    root = power_root(tmp_path, "mem")
    executor = RecordingExecutor({("systemctl", "status"): exited(3), ("systemctl",): exited(1)})
    reply = await suspend(agent_factory, executor, root, "guest-suspend-ram")
    assert reply == {"return": 7}
    assert (root / "sys/power/state").read_text() == "mem"


async def test_the_last_failure_is_reported(agent_factory: AgentFactory, tmp_path: Path) -> None:
    root = power_root(tmp_path, "freeze")
    executor = RecordingExecutor({("systemctl", "status"): exited(3), ("systemctl",): exited(1)})
    async with served(agent_factory, executor, root) as client:
        reply = await client.execute("guest-suspend-ram")
    assert reply["error"]["desc"] == (
        "the helper program 'systemctl suspend' returned an unexpected exit status code (1)"
    )


async def test_a_configured_suspend_command(agent_factory: AgentFactory, tmp_path: Path) -> None:
    executor = RecordingExecutor({("my-suspend",): OK})
    root = power_root(tmp_path, None)
    command = ("my-suspend", "--now")
    reply = await suspend(
        agent_factory, executor, root, "guest-suspend-ram", suspend_ram_command=command
    )
    assert reply == {"return": 7}
    assert executor.commands == [("my-suspend", "--now")]


# --- set-time --------------------------------------------------------------------


async def test_set_time_sets_the_clock_then_the_rtc(agent_factory: AgentFactory) -> None:
    clock, executor = FakeClock(), RecordingExecutor(default=OK)
    async with served(agent_factory, executor, clock=clock) as client:
        reply = await client.execute("guest-set-time", {"time": 1_893_456_000_123_456_789})
    assert reply == {"return": {}}
    assert clock.settings == [1_893_456_000_123_456_789]
    assert executor.commands == [("/sbin/hwclock", "-w")]


async def test_set_time_without_time_reads_the_rtc(agent_factory: AgentFactory) -> None:
    clock, executor = FakeClock(), RecordingExecutor(default=OK)
    hwclock = ("busybox", "hwclock")
    async with served(agent_factory, executor, clock=clock, hwclock_command=hwclock) as client:
        reply = await client.execute("guest-set-time")
    assert reply == {"return": {}}
    assert clock.settings == []
    assert executor.commands == [("busybox", "hwclock", "-s")]


async def test_set_time_errors(agent_factory: AgentFactory) -> None:
    clock = FakeClock(error=OSError(errno.EINVAL, "Invalid argument"))
    async with served(agent_factory, RecordingExecutor(default=exited(1)), clock=clock) as client:
        reply = await client.execute("guest-set-time", {"time": -1})
        assert reply["error"]["desc"] == "Failed to set time to guest: Invalid argument"
        reply = await client.execute("guest-set-time")
        assert reply["error"]["desc"].startswith(
            "child process has failed to set hardware clock to system time: /sbin/hwclock -s failed"
        )


@pytest.mark.parametrize(
    "time", [-(10**9) - 1, 3155760000 * 10**9, 2**63 - 1, 101 * 365 * 86400 * 10**9]
)
async def test_set_time_refuses_a_year_outside_1970_to_2069(
    agent_factory: AgentFactory, time: int
) -> None:
    clock, executor = FakeClock(), RecordingExecutor(default=OK)
    async with served(agent_factory, executor, clock=clock) as client:
        reply = await client.execute("guest-set-time", {"time": time})
    assert reply == {"error": {"class": "GenericError", "desc": "Invalid time"}}
    assert clock.settings == []
    assert executor.commands == []


def test_the_commands_come_from_the_command_line() -> None:
    from agent.daemon.options import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--poweroff-command", "busybox poweroff -f", "--suspend-ram-command", "'my suspend' x"]
    )
    config = config_from_args(args)
    assert config.poweroff_command == ("busybox", "poweroff", "-f")
    assert config.suspend_ram_command == ("my suspend", "x")
    assert config.reboot_command == AgentConfig().reboot_command
    assert config.suspend_disk_command is None
