"""The embedding API: build an agent, serve it on any ``trio.abc.Stream``.

    async with Agent(AgentConfig(statedir=tmp)) as agent:
        await agent.serve(stream)      # until the peer closes the stream

or, in one call, ``await serve_stream(stream)``. ``async with`` is the only
way an agent runs, embedded or as ``trio-qga``: it holds the agent's own
tasks (guest-exec children, the fsfreeze auto-thaw timer) and releases what
the agent holds when it ends. A test suite serves one end
of ``trio.testing.memory_stream_pair()`` and talks to the other; a test-VM
harness serves a socket or serial port it opened itself.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import trio

from agent.core.activity import Activity
from agent.core.config import KERNEL_MOUNT_TABLE, AgentConfig
from agent.core.context import AgentContext
from agent.core.dispatch import Dispatcher
from agent.core.policy import CommandPolicy
from agent.core.registry import HandlerSet, Registry
from agent.core.session import ReleaseMemory, serve_session
from agent.core.store import SessionStore
from agent.models.schema import SchemaDefs, load_builtin
from agent.system.fsfreeze.freezer import Freezer
from agent.system.fsfreeze.loghold import LogHold
from agent.system.fsguard import FsGuard, FsTimeout
from agent.transports.activation import method_of
from agent.transports.group import Channel, serve_all
from agent.transports.spec import TransportSpec

if TYPE_CHECKING:
    from agent.core.plugins import FoundPlugin
    from agent.system.executor import Clock, Executor, SystemRoot
    from agent.system.sysinfo.fstrim import Trim

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 1.0  # seconds for the open files to close when the agent stops


# The package of the agent's own handlers. The handlers sit above the core (they
# use its context and registry), so the core loads them by name, as it loads a
# plugin's, and never imports them.
BUILTIN_HANDLERS = "agent.handlers"


def builtin_handlers() -> tuple[HandlerSet, ...]:
    """The handler sets of the agent's own commands, every group imported."""
    first, groups = _builtin_groups()
    return tuple(_handler_set(module) for module in (first, *groups))


def build_registry(
    handlers: Iterable[HandlerSet] | None = None, schema: SchemaDefs | None = None
) -> Registry:
    """Every command an agent serves: ``handlers`` (the agent's own by default)
    checked against ``schema``."""
    registry = Registry(schema or load_builtin())
    for handler_set in builtin_handlers() if handlers is None else handlers:
        registry.add(handler_set)
    return registry


def _builtin_groups() -> tuple[str, tuple[str, ...]]:
    """The module of the handlers a first reply needs, and those of the others."""
    package = importlib.import_module(BUILTIN_HANDLERS)
    return package.FIRST, package.GROUPS


def _add_group(registry: Registry, module: str) -> None:
    registry.add(_handler_set(module))


def _handler_set(module: str) -> HandlerSet:
    handlers: HandlerSet = importlib.import_module(module).handlers
    return handlers


class NotStarted(RuntimeError):
    """What only a running agent has was asked of one not started (``async with``)."""


class _Started(NamedTuple):
    """What starting an agent builds."""

    context: AgentContext
    dispatcher: Dispatcher
    plugins: list[FoundPlugin]
    own_groups: tuple[Callable[[], None], ...]  # the loads of the agent's other handler groups


class Agent:
    """One guest agent: its commands, state and configuration.

    Building one stores its configuration and seams and does nothing else;
    ``async with agent`` starts it (see :meth:`__aenter__`). What only a
    started agent has (:attr:`context`, :attr:`dispatcher`, :attr:`plugins`)
    raises :class:`NotStarted` before that, and stays for inspection after.
    An agent runs once. Each of its transports serves one client at a time,
    as qemu-ga does, and :meth:`serve` too; sessions of different transports
    run side by side, on the agent's one state (open files, processes, the
    freeze).
    """

    def __init__(
        self,
        config: AgentConfig | None = None,
        *,
        handlers: Iterable[HandlerSet] | None = None,
        schema: SchemaDefs | None = None,
        executor: Executor | None = None,
        root: SystemRoot | None = None,
        clock: Clock | None = None,
        freezer: Freezer | None = None,
        trim: Trim | None = None,
        log_hold: LogHold | None = None,
        release_memory: ReleaseMemory | None = None,
    ) -> None:
        """``handlers`` and ``schema`` replace the agent's own commands;
        ``executor``, ``root``, ``clock`` and ``trim`` replace the real system
        for the commands that change it (tests pass a recording executor, a
        scratch directory, a fake clock and a fake FITRIM);
        ``freezer`` replaces the one built from ``config`` (tests pass fake ioctls);
        ``log_hold`` is held while filesystems are frozen (the CLI's log handler);
        ``release_memory`` gives freed memory back to the system after a session's
        bulk transfers (the CLI's ``malloc_trim``; an embedding program's allocator
        is its own business)."""
        self.config = config or AgentConfig()
        self._handlers = handlers
        self._schema = schema
        self._executor = executor
        self._root = root
        self._clock = clock
        self._freezer = freezer
        self._trim = trim
        self._log_hold = log_hold
        self._release_memory = release_memory
        self._started: _Started | None = None
        self._one_client = trio.Lock()
        self._activity = Activity()  # the sessions' reads, and their first reply
        self._background = contextlib.AsyncExitStack()  # closes what __aenter__ started

    @property
    def context(self) -> AgentContext:
        """What every handler sees: configuration, commands, state."""
        return self._require_started("context").context

    @property
    def dispatcher(self) -> Dispatcher:
        """Runs one request: validation, policy, the handler, the reply."""
        return self._require_started("dispatcher").dispatcher

    @property
    def plugins(self) -> list[FoundPlugin]:
        """The plugins found, and what became of each (none unless
        ``config.plugins``); they are found now if they were not yet."""
        started = self._require_started("plugins")
        started.context.registry.complete()
        return started.plugins

    def _require_started(self, attribute: str) -> _Started:
        if self._started is None:
            raise NotStarted(
                f"Agent.{attribute} exists once the agent has started: inside `async with agent`"
            )
        return self._started

    def _start(self) -> _Started:
        """Everything that reads the system: the commands (the handlers
        imported, the plugins found and imported), the command filter checked
        against them, the handle counter and the frozen marker read.

        Of the agent's own handlers, only the group a first request needs
        (sync, ping, info) is imported here; the other groups and the plugins
        are left to the registry to load (:meth:`Registry.add_later`) when a
        request names a command not loaded yet, or when something needs all of
        them (``guest-info``, a command filter to check). The agent's own other
        groups load sooner, once the first reply has gone out and the agent is
        quiet (:meth:`_complete_start`); the plugins only on demand. The agent's CPU
        time to its first reply went from 238 to 220 ms, against 190 for
        ``import trio, pydantic`` (12 alternating starts, medians, busy 2-core
        machine): 1.26x to 1.17x the floor's.

        Plugins on demand, not after the first reply: an agent whose host never
        names a plugin's command (a test VM's ``run``, a host that only syncs,
        reads and writes files) never imports them, which keeps its idle memory
        at ``d154a99``'s (see docs/benchmarks.md, "Plugins on demand").
        """
        config = self.config
        registry = Registry(self._schema or load_builtin())
        own_groups: tuple[Callable[[], None], ...] = ()
        if self._handlers is None:
            first, groups = _builtin_groups()
            registry.add(_handler_set(first))
            own_groups = tuple(functools.partial(_add_group, registry, group) for group in groups)
            for load in own_groups:
                registry.add_later(load)
        else:
            for handler_set in self._handlers:
                registry.add(handler_set)
        plugins: list[FoundPlugin] = []
        if config.plugins:

            def load_installed_plugins() -> None:
                from agent.core.plugins import installed_plugins, load_plugins

                entries = installed_plugins(config.cache_dir)
                plugins.extend(load_plugins(registry, entries, disabled=config.disabled_plugins))

            registry.add_later(load_installed_plugins)
        policy = CommandPolicy.from_lists(config.blocked_rpcs, config.allowed_rpcs)
        policy.check(registry)  # an allowed command whose gate is blocked: PolicyError
        fs = FsGuard(config.fs_timeout, mount_table=KERNEL_MOUNT_TABLE)
        freezer = self._freezer or Freezer(
            config.statedir,
            mount_table=config.mount_table,
            fs=fs,
            hook=config.fsfreeze_hook,
            thaw_timeout=config.thaw_timeout,
            log_hold=self._log_hold,
        )
        context = AgentContext(
            config,
            registry,
            policy,
            SessionStore(config.statedir, config.max_handles),  # reads the handle counter
            freezer,
            fs,
            executor=self._executor,
            root=self._root,
            clock=self._clock,
            trim=self._trim,
        )
        return _Started(context, Dispatcher(context), plugins, own_groups)

    async def __aenter__(self) -> Agent:
        """Start the agent: build its commands (its own, and the installed
        plugins' if ``config.plugins``), check the command filter against them,
        read the state directory (the handle counter; the frozen marker, checked
        against the filesystems), and start the agent's own tasks (the fsfreeze
        auto-thaw timer), which run until the ``async with`` block ends. The log
        says what the command filter disables, so that an administrator sees
        the policy in force.

        Raises :class:`agent.core.policy.PolicyError` when the configuration's
        allow-list names a command whose gate (``'gated-by'`` in the schema) the
        filter disables."""
        if self._started is not None:
            raise RuntimeError("an agent runs once: build another one to start again")
        self._started = started = self._start()
        context = started.context
        if summary := context.policy.summary(context.registry):
            log.info("%s", summary)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(context.tasks.open())  # guest-exec children
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            await nursery.start(context.freezer.run)  # reads the frozen marker
            if started.own_groups:
                nursery.start_soon(self._complete_start, context.registry, started.own_groups)
            self._background = stack.pop_all()
        return self

    async def _complete_start(
        self, registry: Registry, own_groups: tuple[Callable[[], None], ...]
    ) -> None:
        """The agent's own commands left for later, loaded once the first reply
        of any session has gone out (:meth:`_start`) and the agent is quiet
        (:mod:`agent.core.activity`): a group at a time, and none while a
        request is under way or has just come, so that a host's requests do
        not wait behind groups they do not need (a test VM's ``run``). A
        request that names one of their commands has its group loaded at
        once, by the registry's lookup."""
        activity = self._activity
        await activity.replied.wait()
        left = list(own_groups)
        while left:
            await activity.wait_quiet()
            reads = activity.reads
            while left and activity.quiet_since(reads):
                try:
                    registry.complete(through=left.pop(0))
                except Exception:  # a bug: the commands loaded go on being served
                    log.exception("loading the agent's commands failed")
                await trio.lowlevel.checkpoint()
        log.debug("the agent's own commands are loaded")

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.aclose()
        finally:
            await self._background.aclose()

    async def aclose(self) -> None:
        """Release what the agent holds (open file handles, ...).

        Called when the agent stops, SIGTERM included: nothing is left half done,
        and no filesystem is left frozen (the thaw is shielded from cancellation).
        An agent that never started holds nothing.
        """
        if self._started is None:
            return
        await self.context.freezer.aclose()
        try:  # a close flushes, which waits on a hung NFS or FUSE server
            await self.context.fs.call(
                None,
                self.context.store.close_all,
                fail_fast=False,
                limit=min(self.config.fs_timeout, CLOSE_TIMEOUT),
            )
        except FsTimeout as err:
            log.warning("open files not closed yet: %s", err)
        await self.context.aclose_processes()  # guest-exec children are killed and reaped

    async def serve(
        self,
        stream: trio.abc.Stream,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``stream`` until the peer closes it, then close it. The agent
        must be running (inside ``async with agent``), as in production.

        One client at a time, as qemu-ga's: a second :meth:`serve` waits until
        the first session ends. With ``await nursery.start(agent.serve,
        stream)`` the caller resumes once the session has begun.
        """
        try:
            async with self._one_client:
                await self._converse(stream, task_status=task_status)
        finally:
            await trio.aclose_forcefully(stream)

    async def _converse(
        self,
        stream: trio.abc.Stream,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``stream`` until the peer closes it, leaving it open: the
        transports' handler, since the transport that opened a stream closes it.
        Each transport serves one client at a time by itself; sessions of
        different transports run side by side."""
        if self._started is None or not self._started.context.tasks.running:
            raise NotStarted("an agent serves only while it runs: inside `async with agent`")
        task_status.started()
        await serve_session(
            stream, self._started.dispatcher, self._release_memory, activity=self._activity
        )

    async def serve_transports(
        self,
        *,
        listeners: Sequence[socket.socket] = (),
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the configured transports, and ``listeners`` (listening sockets
        the caller opened, such as systemd's), each in a task of its own, until
        cancelled or until the last has ended for good (its error is raised:
        :class:`agent.transports.serve.TransportError`).

        With ``listeners``, qemu-ga's default transport (virtio-serial) is not
        added when the configuration names none. With ``await
        nursery.start(agent.serve_transports)`` the caller resumes once every
        transport that can open now is open (the sockets listening, the devices
        open); one that cannot is logged and left out, or with ``retry_path``
        waited for.
        """
        specs = self.config.named_transports if listeners else self.config.transport_specs
        channels = [Channel(spec) for spec in specs]
        channels += [
            Channel(TransportSpec(method_of(sock), retry=self.config.retry_path), sock)
            for sock in listeners
        ]
        await serve_all(channels, self._converse, task_status=task_status)


async def serve_stream(stream: trio.abc.Stream, config: AgentConfig | None = None) -> None:
    """Build an agent from ``config``, run it, and serve ``stream`` with it."""
    async with Agent(config) as agent:
        await agent.serve(stream)
