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

Tests that need a real machine get ``qga_vm``: a throw-away VM of this machine
with trio-qga inside (:class:`agent.host.vm.background.BackgroundVm`, see
docs/vm.md), configured by the ``qga_vm`` marker, whose keywords are those of
:class:`agent.host.vm.config.VmConfig` plus ``scope``::

    @pytest.mark.qga_vm(modules=("dummy",))
    def test_a_dummy_link(qga_vm):
        qga_vm.run(["ip", "link", "add", "d0", "type", "dummy"])   # loads the module

VMs of the same options are shared for the whole session (``scope="session"``,
the default: booting one takes seconds), for a module (``scope="module"``) or
not at all (``scope="function"``); one that has powered off is replaced. For
any other lifetime, ``qga_vm_factory(**options)`` boots one in a ``with``
block in a fixture of your own. Nothing of the launcher is imported until a
test asks for a VM.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from agent.core.agent import Agent
    from agent.core.config import AgentConfig
    from agent.host.client import QgaClient
    from agent.host.vm.background import BackgroundVm
    from agent.host.vm.config import VmConfig

VM_SCOPES = ("session", "module", "function")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "qga_vm(scope='session', **options): the test runs programs in a throw-away VM"
        " (the qga_vm fixture); options are those of agent.host.vm.VmConfig",
    )


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


class VmPool:
    """The VMs of ``qga_vm``: one per set of options and lifetime, booted when
    first asked for, replaced when it has stopped, stopped when its lifetime ends."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._vms: dict[tuple[VmConfig, str], BackgroundVm] = {}
        self._numbers = itertools.count(1)

    def get(self, config: VmConfig, lifetime: str) -> BackgroundVm:
        from agent.host.vm.background import BackgroundVm

        vm = self._vms.get((config, lifetime))
        if vm is None or not vm.running:
            if vm is not None:
                vm.stop()
            log = self._directory / f"console-{next(self._numbers)}.log"
            vm = self._vms[config, lifetime] = BackgroundVm(config, console_log=log).start()
        return vm

    def has(self, lifetime: str) -> bool:
        return any(key[1] == lifetime for key in self._vms)

    def end(self, lifetime: str) -> None:
        for key in [key for key in self._vms if key[1] == lifetime]:
            self._vms.pop(key).stop()

    def close(self) -> None:
        for vm in self._vms.values():
            vm.stop()
        self._vms.clear()


def vm_config(options: dict[str, Any]) -> VmConfig:
    """A VmConfig from keywords, lists made tuples (a config is a key: hashable)."""
    from agent.host.vm.config import VmConfig

    fields: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in options.items()
    }
    return VmConfig(**fields)


@pytest.fixture(scope="session")
def qga_vm_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmPool]:
    pool = VmPool(tmp_path_factory.mktemp("qga-vm"))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def qga_vm_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """``qga_vm_factory(**options)``: a new VM (a ``BackgroundVm``, started), to use
    in a ``with`` block of a fixture of any scope; stopped at the end of the
    session at the latest."""
    from agent.host.vm.background import BackgroundVm

    started: list[BackgroundVm] = []
    directory = tmp_path_factory.mktemp("qga-vm-factory")

    def factory(config: VmConfig | None = None, **options: Any) -> BackgroundVm:
        chosen = config or vm_config(options)
        vm = BackgroundVm(chosen, console_log=directory / f"console-{len(started) + 1}.log")
        started.append(vm)
        return vm.start()

    yield factory
    for vm in started:
        vm.stop()


@pytest.fixture
def qga_vm(request: pytest.FixtureRequest, qga_vm_pool: VmPool) -> BackgroundVm:
    """A running VM with trio-qga inside, as the test's ``qga_vm`` marker asks."""
    marker = request.node.get_closest_marker("qga_vm")
    options = dict(marker.kwargs) if marker is not None else {}
    scope = options.pop("scope", "session")
    if scope not in VM_SCOPES:
        raise pytest.UsageError(f"qga_vm(scope={scope!r}): one of {', '.join(VM_SCOPES)}")
    config = vm_config(options)
    if scope == "session":
        return qga_vm_pool.get(config, "session")
    owner = request.node if scope == "function" else request.node.getparent(pytest.Module)
    lifetime = owner.nodeid
    if not qga_vm_pool.has(lifetime):
        owner.addfinalizer(lambda: qga_vm_pool.end(lifetime))
    return qga_vm_pool.get(config, lifetime)
