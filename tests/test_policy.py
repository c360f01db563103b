"""The command filter: blocked and allowed names, the gates of extensions, the frozen state.

The filters of real distributions, through a socket and the client, are in
``tests/test_command_filters.py``; here each rule on its own, on an agent in memory.
"""

from __future__ import annotations

import logging

import pytest

from agent import Agent
from agent.core.policy import NOT_ALLOWED, CommandPolicy, PolicyError
from agent.core.registry import Command, HandlerSet, Registry
from agent.models.schema import parse
from tests.support.agents import AgentFactory, served

EXEC = "guest-exec"
STATUS = "guest-exec-status"
START = "__io.github.trio-qga_exec-start"
STREAMING = [
    f"__io.github.trio-qga_exec-{name}"
    for name in ("start", "read", "write", "close-stdin", "resize", "signal")
]

SCHEMA = parse(
    """
    { 'command': 'guest-exec' }
    { 'command': 'guest-exec-status' }
    { 'command': 'guest-ping', 'allowed-while-frozen': true }
    { 'command': 'x-stream', 'gated-by': ['guest-exec', 'guest-exec-status'] }
    """,
    "test",
)


def commands() -> dict[str, Command]:
    handlers = HandlerSet()
    for name in SCHEMA.commands:
        handlers.command(name)(lambda ctx: {})
    registry = Registry(SCHEMA)
    registry.add(handlers)
    return {command.name: command for command in registry}


def enabled(policy: CommandPolicy) -> set[str]:
    return {
        name
        for name, command in commands().items()
        if policy.disabled_reason(command, False) is None
    }


@pytest.mark.parametrize(
    ("blocked", "allowed", "expected"),
    [
        ((), None, {EXEC, STATUS, "guest-ping", "x-stream"}),
        # Every gate must pass: blocking either one disables the gated command.
        ([EXEC], None, {STATUS, "guest-ping"}),
        ([STATUS], None, {EXEC, "guest-ping"}),
        ([EXEC, STATUS], None, {"guest-ping"}),
        # An allow-list without the gates: the gated command is left out anyway.
        ((), ["guest-ping"], {"guest-ping"}),
        ((), ["guest-ping", EXEC, STATUS], {EXEC, STATUS, "guest-ping"}),
        ((), ["guest-ping", EXEC, STATUS, "x-stream"], {EXEC, STATUS, "guest-ping", "x-stream"}),
        # Blocked by name, whatever its gates say.
        (["x-stream"], None, {EXEC, STATUS, "guest-ping"}),
    ],
)
def test_a_gated_command_is_enabled_only_while_all_its_gates_pass_the_filter(
    blocked: list[str], allowed: list[str] | None, expected: set[str]
) -> None:
    assert enabled(CommandPolicy.from_lists(blocked, allowed)) == expected


def test_frozen_disables_what_is_not_allowed_while_frozen_gates_or_not() -> None:
    policy = CommandPolicy()
    reasons = {name: policy.disabled_reason(c, frozen=True) for name, c in commands().items()}
    assert reasons == {
        EXEC: NOT_ALLOWED,
        STATUS: NOT_ALLOWED,
        "guest-ping": None,
        "x-stream": NOT_ALLOWED,
    }


def test_an_allow_list_naming_a_command_whose_gate_is_disabled_is_refused() -> None:
    with pytest.raises(PolicyError) as refused:
        CommandPolicy.from_lists([], ["guest-ping", EXEC, "x-stream"]).check(commands().values())
    assert str(refused.value) == (
        "--allow-rpcs names commands whose gates the command filter disables:"
        " x-stream (gated by guest-exec-status); allow the gates too, or leave those commands out"
    )
    with pytest.raises(PolicyError, match=r"x-stream \(gated by guest-exec, guest-exec-status\)"):
        CommandPolicy.from_lists([EXEC], ["x-stream", EXEC]).check(commands().values())


@pytest.mark.parametrize(
    ("blocked", "allowed"),
    [
        ([EXEC, STATUS], None),  # a block-list never asks for a command
        ([], ["guest-ping"]),  # the gated command is not asked for
        ([], [EXEC, STATUS, "x-stream"]),
        (["x-stream", EXEC], ["x-stream"]),  # blocked by name too: nothing asked for
    ],
)
def test_filters_without_a_contradiction_are_accepted(
    blocked: list[str], allowed: list[str] | None
) -> None:
    CommandPolicy.from_lists(blocked, allowed).check(commands().values())


def test_the_summary_lists_what_is_disabled_and_through_which_gates() -> None:
    all_commands = commands().values()
    assert CommandPolicy().summary(all_commands) is None
    assert CommandPolicy.from_lists([EXEC, STATUS]).summary(all_commands) == (
        "command filter: 3 of 4 commands disabled: guest-exec, guest-exec-status;"
        " by the gates guest-exec, guest-exec-status: x-stream"
    )
    assert CommandPolicy.from_lists([], ["guest-ping", EXEC, "guest-get-devices"]).summary(
        all_commands
    ) == (
        "command filter: 2 of 4 commands disabled: guest-exec-status, x-stream;"
        " not commands of this agent: guest-get-devices"
    )
    assert CommandPolicy.from_lists(["x-nothing"]).summary(all_commands) == (
        "command filter: 0 of 4 commands disabled: none; not commands of this agent: x-nothing"
    )


# ------------------------------------------------------------ the agent --
async def test_the_agent_refuses_to_start_with_a_contradictory_filter(
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory(
        blocked_rpcs=(EXEC,), allowed_rpcs=("guest-ping", START, EXEC, STATUS), plugins=False
    )  # built: the filter is checked against the commands, which starting it finds
    with pytest.raises(PolicyError, match=f"{START} \\(gated by guest-exec\\)"):
        async with agent:
            pass


async def test_blocking_guest_exec_disables_the_streaming_exec(agent_factory: AgentFactory) -> None:
    async with served(agent_factory(blocked_rpcs=(EXEC,), plugins=False)) as client:
        info = (await client.execute("guest-info"))["return"]["supported_commands"]
        disabled = {c["name"] for c in info if not c["enabled"]}
        assert disabled == {EXEC, *STREAMING}
        reply = await client.execute(START, {"path": "/bin/true"})
        assert reply == {
            "error": {
                "class": "CommandNotFound",
                "desc": f"Command {START} has been disabled: the command is not allowed",
            }
        }
        assert (await client.execute(STATUS, {"pid": 1}))["error"]["class"] == "GenericError"


async def test_the_filter_is_logged_when_the_agent_starts(
    agent_factory: AgentFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.core.agent")
    agent: Agent = agent_factory(blocked_rpcs=(EXEC, STATUS), plugins=False)
    assert not [r for r in caplog.records if r.name == "agent.core.agent"]  # not when built
    async with agent:
        [record] = [r for r in caplog.records if r.name == "agent.core.agent"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"command filter: 8 of {len(agent.context.registry)} commands disabled:"
        f" guest-exec, guest-exec-status; by the gates guest-exec, guest-exec-status:"
        f" {', '.join(STREAMING)}"
    )


async def test_no_filter_no_log_line(
    agent_factory: AgentFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.core.agent")
    async with agent_factory(plugins=False):
        assert not [r for r in caplog.records if r.name == "agent.core.agent"]
