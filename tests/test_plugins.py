"""Plugins through entry points: loading, isolation of failures, clashes, policy."""

from __future__ import annotations

import os
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from agent import Agent, AgentConfig
from agent.core.plugins import (
    ENTRY_POINT_GROUP,
    Plugin,
    PluginEntry,
    installed_plugins,
    load_plugins,
)
from agent.core.policy import NOT_ALLOWED, CommandPolicy
from agent.core.registry import HandlerSet, Registry
from tests.support.agents import AgentFactory, served
from tests.support.clients import SocketClient
from tests.support.processes import run_agent, running_agent

pytestmark = pytest.mark.slow

# -------------------------------------------------- plugins for the tests --
hello_handlers = HandlerSet()


@hello_handlers.command("guest-x-hello")
def hello(ctx: object, name: str | None) -> dict[str, object]:
    return {"greeting": f"hello {name or 'world'}"}


HELLO = Plugin(
    """
    { 'struct': 'GuestXHello', 'data': { 'greeting': 'str' } }
    { 'command': 'guest-x-hello', 'data': { '*name': 'str' }, 'returns': 'GuestXHello' }
    """,
    hello_handlers,
)
BAD_SCHEMA = Plugin("{ 'command': 'guest-x-broken' ", hello_handlers)
MISMATCHED = Plugin("{ 'command': 'guest-x-hello', 'data': { 'who': 'str' } }\n", hello_handlers)
ping_handlers = HandlerSet()


@ping_handlers.command("guest-ping")
def fake_ping(ctx: object) -> dict[str, object]:
    return {}


CLASHING = Plugin("{ 'command': 'guest-ping' }\n", ping_handlers)
config_handlers = HandlerSet()


@config_handlers.command("guest-x-read-config")
def read_config(ctx: object, name: str) -> str:
    return ""


# Reads a file the host names, as guest-file-open and guest-file-read do together.
GATED = Plugin(
    "{ 'command': 'guest-x-read-config', 'data': { 'name': 'str' }, 'returns': 'str',"
    "  'gated-by': ['guest-file-open', 'guest-file-read'] }\n",
    config_handlers,
)
MISSPELT_GATE = Plugin(
    "{ 'command': 'guest-x-read-config', 'data': { 'name': 'str' }, 'returns': 'str',"
    "  'gated-by': ['guest-file-opne'] }\n",
    config_handlers,
)
NOT_A_PLUGIN = "just a string"


def entry_points(**targets: str) -> list[PluginEntry]:
    return [
        PluginEntry.of(metadata.EntryPoint(name, f"tests.test_plugins:{target}", ENTRY_POINT_GROUP))
        for name, target in targets.items()
    ]


def builtin_registry() -> Registry:
    from agent.core.agent import build_registry

    return build_registry()


def test_a_plugin_adds_its_commands() -> None:
    registry = builtin_registry()
    [found] = load_plugins(registry, entry_points(hello="HELLO"))
    assert (found.status, found.commands) == ("loaded", ["guest-x-hello"])
    command = registry.get("guest-x-hello")
    assert command is not None
    assert command.source == "plugin hello (unknown distribution)"


def test_failures_are_isolated_and_reported() -> None:
    registry = builtin_registry()
    before = len(registry)
    found = load_plugins(
        registry,
        [
            *entry_points(
                bad="BAD_SCHEMA", clash="CLASHING", notplugin="NOT_A_PLUGIN", wrong="MISMATCHED"
            ),
            PluginEntry.of(
                metadata.EntryPoint("missing", "no_such_module_anywhere:plugin", ENTRY_POINT_GROUP)
            ),
        ],
    )
    status = {plugin.name: plugin.status for plugin in found}
    assert "JSON parse error" in status["bad"]
    assert status["clash"] == (
        "plugin clash (unknown distribution): guest-ping is already provided by trio-qga"
    )
    assert "is a str, not an agent.core.plugins.Plugin" in status["notplugin"]
    assert "schema says ['who']" in status["wrong"]
    assert status["missing"].startswith("failed to import no_such_module_anywhere:plugin")
    assert len(registry) == before  # nothing half-registered


def test_a_plugin_cannot_take_another_plugins_command() -> None:
    registry = builtin_registry()
    found = load_plugins(registry, entry_points(a="HELLO", b="HELLO"))
    assert [p.status for p in found] == [
        "loaded",
        "plugin b (unknown distribution): guest-x-hello is already provided by"
        " plugin a (unknown distribution)",
    ]


def test_disabled_plugins_are_not_loaded() -> None:
    registry = builtin_registry()
    [found] = load_plugins(registry, entry_points(hello="HELLO"), disabled=["hello"])
    assert found.status == "disabled"
    assert registry.get("guest-x-hello") is None


def test_plugin_commands_obey_the_policy() -> None:
    registry = builtin_registry()
    load_plugins(registry, entry_points(hello="HELLO"))
    command = registry.get("guest-x-hello")
    assert command is not None
    assert CommandPolicy().disabled_reason(command, frozen=True) == NOT_ALLOWED
    assert CommandPolicy.from_lists(blocked=["guest-x-hello"]).disabled_reason(command, False) == (
        NOT_ALLOWED
    )
    assert CommandPolicy.from_lists(allowed=["guest-ping"]).disabled_reason(command, False) == (
        NOT_ALLOWED
    )


def test_a_plugin_command_is_disabled_where_its_gates_are() -> None:
    registry = builtin_registry()
    [found] = load_plugins(registry, entry_points(gated="GATED"))
    assert found.status == "loaded"
    command = registry.get("guest-x-read-config")
    assert command is not None
    for blocked, allowed, enabled in [
        ((), None, True),
        (("guest-file-read",), None, False),  # every gate must pass, not just one
        (("guest-file-open", "guest-file-read"), None, False),
        ((), ("guest-ping", "guest-x-read-config", "guest-file-open", "guest-file-read"), True),
    ]:
        policy = CommandPolicy.from_lists(blocked, allowed)
        assert (policy.disabled_reason(command, False) is None) is enabled, (blocked, allowed)


def test_a_plugin_with_an_unknown_gate_is_skipped() -> None:
    """A misspelt gate would match no filter, and leave the command ungated."""
    registry = builtin_registry()
    [found] = load_plugins(registry, entry_points(typo="MISSPELT_GATE"))
    assert found.status == (
        "plugin typo (unknown distribution): guest-x-read-config is gated by"
        " guest-file-opne, which is not a command of the agent's own schema"
    )
    assert registry.get("guest-x-read-config") is None


# -------------------------------------------- the installed example plugin --
def test_the_example_plugins_commands_have_no_gates() -> None:
    """Audited (SECURITY.md): a process list from /proc, which every guest user can
    read, and ``systemctl show`` of a unit: no program, file, account or power
    action of the host's choosing, so nothing a qemu-ga command gates."""
    registry = builtin_registry()
    load_plugins(registry, installed_plugins())
    gates = {
        name: command.gated_by
        for name in ("guest-x-process-list", "guest-x-service-status")
        if (command := registry.get(name)) is not None
    }
    assert gates == {"guest-x-process-list": (), "guest-x-service-status": ()}


async def test_example_plugin_is_served_like_a_builtin(agent_factory: AgentFactory) -> None:
    async with served(agent_factory(plugins=True)) as agent_client:
        info = (await agent_client.execute("guest-info"))["return"]
        names = {c["name"] for c in info["supported_commands"]}
        assert {"guest-x-process-list", "guest-x-service-status"} <= names
        processes = (await agent_client.execute("guest-x-process-list"))["return"]
        assert os.getpid() in {p["pid"] for p in processes}
        reply = await agent_client.execute("guest-x-process-list", {"nam": "x"})
        assert reply["error"]["desc"] == "Parameter 'nam' is unexpected"


async def test_an_embedded_agent_loads_no_plugin_unless_asked() -> None:
    assert AgentConfig().plugins is False
    async with Agent(AgentConfig()) as agent:
        assert agent.context.registry.get("guest-x-process-list") is None
        assert agent.plugins == []


def test_example_plugin_end_to_end_through_the_daemon(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (proc, sock):
        client = SocketClient(sock)
        try:
            processes = client.execute("guest-x-process-list", {"name": "python3"})["return"]
            processes += client.execute("guest-x-process-list", {"name": "python"})["return"]
            assert proc.pid in {p["pid"] for p in processes}
            blocked = client.execute("guest-x-service-status", {"name": "--all"})
            assert blocked["error"]["desc"] == "invalid unit name '--all'"
        finally:
            client.close()


def test_a_broken_installed_plugin_leaves_the_agent_serving(tmp_path: Path) -> None:
    """A real distribution whose module raises on import: logged, skipped, agent
    up. Plugins load on demand: here when guest-info lists every command."""
    site = tmp_path / "site"
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nbroken = broken_plugin:plugin\n"
    )
    (site / "broken_plugin.py").write_text(textwrap.dedent("raise RuntimeError('boom')\n"))
    log = tmp_path / "agent.log"
    with running_agent(tmp_path, "-l", str(log), env={"PYTHONPATH": str(site)}) as (_, sock):
        client = SocketClient(sock)
        assert client.execute("guest-ping") == {"return": {}}
        assert "return" in client.execute("guest-info")
        assert client.execute("guest-ping") == {"return": {}}
        client.close()
    text = log.read_text()
    assert "plugin broken (broken-plugin 1.0) skipped: failed to import" in text
    assert "RuntimeError: boom" in text


def test_list_plugins_shows_where_each_comes_from() -> None:
    result = run_agent(None, "--list-plugins")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "procinfo\ttrio-qga-procinfo 0.1.0\ttrio_qga_procinfo:plugin\tloaded"
    assert lines[1:] == ["\tguest-x-process-list", "\tguest-x-service-status"]
    disabled = run_agent(None, "--list-plugins", "--disable-plugin", "procinfo")
    assert disabled.stdout.endswith("\tdisabled\n")


@pytest.mark.parametrize("flags", [["--no-plugins"], ["--disable-plugin", "procinfo"]])
def test_plugins_can_be_turned_off(tmp_path: Path, flags: list[str]) -> None:
    with running_agent(tmp_path, *flags) as (_, sock):
        client = SocketClient(sock)
        try:
            reply = client.execute("guest-x-process-list")
            assert reply["error"]["class"] == "CommandNotFound"
            assert client.execute("guest-ping") == {"return": {}}
        finally:
            client.close()


@pytest.mark.parametrize(
    ("flags", "listed"),
    [([], True), (["--no-plugins"], False), (["--disable-plugin", "procinfo"], False)],
)
def test_block_rpcs_help_lists_the_commands_of_the_plugins_that_load(
    flags: list[str], listed: bool
) -> None:
    result = run_agent(None, "-b", "help", *flags)
    assert result.returncode == 0, result.stderr
    names = result.stdout.splitlines()
    assert "guest-ping" in names
    assert ("guest-x-process-list" in names) is listed
