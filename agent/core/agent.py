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
from collections.abc import Iterable

import trio

from agent.core.config import AgentConfig
from agent.core.context import AgentContext, AgentState
from agent.core.dispatch import Dispatcher
from agent.core.plugin_record import recorded_entry_points
from agent.core.plugins import installed_entry_points, load_plugins
from agent.core.policy import CommandPolicy
from agent.core.registry import HandlerSet, Registry
from agent.core.session import ReleaseMemory, serve_session
from agent.core.store import HandleStore
from agent.models.schema import SchemaDefs, load_builtin
from agent.system.executor import Clock, Executor, ProcessExecutor, SystemClock, SystemRoot
from agent.system.fsfreeze.freezer import Freezer
from agent.system.fsfreeze.loghold import LogHold
from agent.system.fsguard import FsGuard, FsTimeout
from agent.system.sysinfo.fstrim import Trim, fitrim
from agent.transports.serve import serve_transport

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 1.0  # seconds for the open files to close when the agent stops


# The package of the agent's own handlers. The handlers sit above the core (they
# use its context and registry), so the core loads them by name, as it loads a
# plugin's, and never imports them.
BUILTIN_HANDLERS = "agent.handlers"


def builtin_handlers() -> tuple[HandlerSet, ...]:
    """The handler sets of the agent's own commands."""
    handlers: tuple[HandlerSet, ...] = importlib.import_module(BUILTIN_HANDLERS).BUILTIN
    return handlers


def build_registry(
    handlers: Iterable[HandlerSet] | None = None, schema: SchemaDefs | None = None
) -> Registry:
    """Every command an agent serves: ``handlers`` (the agent's own by default)
    checked against ``schema``."""
    registry = Registry(schema or load_builtin())
    for handler_set in builtin_handlers() if handlers is None else handlers:
        registry.add(handler_set)
    return registry


class Agent:
    """One guest agent: its commands, state and configuration.

    It serves one client at a time, as qemu-ga does: a second :meth:`serve`
    waits until the first session ends.
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
        """``executor``, ``root``, ``clock`` and ``trim`` replace the real system
        for the commands that change it (tests pass a recording executor, a
        scratch directory, a fake clock and a fake FITRIM);
        ``freezer`` replaces the one built from ``config`` (tests pass fake ioctls);
        ``log_hold`` is held while filesystems are frozen (the CLI's log handler);
        ``release_memory`` gives freed memory back to the system after a session's
        bulk transfers (the CLI's ``malloc_trim``; an embedding program's allocator
        is its own business).

        Raises :class:`agent.core.policy.PolicyError` when ``config``'s allow-list names
        a command whose gate (``'gated-by'`` in the schema) the filter disables."""
        self.config = config or AgentConfig()
        fs = FsGuard(self.config.fs_timeout)
        freezer = freezer or Freezer(
            self.config.statedir,
            mount_table=self.config.mount_table,
            hook=self.config.fsfreeze_hook,
            thaw_timeout=self.config.thaw_timeout,
            fs=fs,
            log_hold=log_hold,
        )
        registry = build_registry(handlers, schema)
        self.plugins = (
            load_plugins(
                registry,
                disabled=self.config.disabled_plugins,
                entry_points=(
                    functools.partial(recorded_entry_points, self.config.cache_dir)
                    if self.config.cache_dir
                    else installed_entry_points
                ),
            )
            if self.config.plugins
            else []
        )
        policy = CommandPolicy.from_lists(self.config.blocked_rpcs, self.config.allowed_rpcs)
        policy.check(registry)  # an allowed command whose gate is blocked: PolicyError
        store = HandleStore(self.config.statedir, self.config.max_handles)
        self.context = AgentContext(
            self.config,
            registry,
            policy,
            store,
            AgentState(freezer),
            executor=executor or ProcessExecutor(),
            root=root or SystemRoot(),
            clock=clock or SystemClock(),
            fs=fs,
            trim=trim or fitrim,
        )
        self.dispatcher = Dispatcher(self.context)
        self._one_client = trio.Lock()
        self._release_memory = release_memory
        self._background = contextlib.AsyncExitStack()  # closes what __aenter__ started

    async def __aenter__(self) -> Agent:
        """Start the agent's own tasks (the fsfreeze auto-thaw timer); they run
        until the ``async with`` block ends. The log says what the command filter
        disables, so that an administrator sees the policy in force."""
        if summary := self.context.policy.summary(self.context.registry):
            log.info("%s", summary)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.context.tasks.open())  # guest-exec children
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            await nursery.start(self.context.state.freezer.run)
            self._background = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.aclose()
        finally:
            await self._background.aclose()

    async def aclose(self) -> None:
        """Release what the agent holds (open file handles, ...).

        Called when the agent stops, SIGTERM included: nothing is left half done,
        and no filesystem is left frozen (the thaw is shielded from cancellation).
        """
        await self.context.state.freezer.aclose()
        try:  # a close flushes, which waits on a hung NFS or FUSE server
            await self.context.fs.call(
                None,
                self.context.store.close_all,
                fail_fast=False,
                limit=min(self.config.fs_timeout, CLOSE_TIMEOUT),
            )
        except FsTimeout as err:
            log.warning("open files not closed yet: %s", err)
        await self.context.processes.aclose()  # guest-exec children are killed and reaped

    async def serve(
        self,
        stream: trio.abc.Stream,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``stream`` until the peer closes it, then close it. The agent
        must be running (inside ``async with agent``), as in production.

        With ``await nursery.start(agent.serve, stream)`` the caller resumes once
        the session has begun (a second client waits for the first, as with qemu-ga).
        """
        try:
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
        transports' handler, since the transport that opened a stream closes it."""
        if not self.context.tasks.running:
            raise RuntimeError("an agent serves only while it runs: inside `async with agent`")
        async with self._one_client:
            task_status.started()
            await serve_session(stream, self.dispatcher, self._release_memory)

    async def serve_transport(
        self,
        *,
        listener: socket.socket | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the configured transport (or serve ``listener``, a listening socket
        the caller opened, such as systemd's) and serve its clients until cancelled.

        With ``await nursery.start(agent.serve_transport)`` the caller resumes once
        the transport is open (the socket listening, the device open).
        """
        await serve_transport(
            self.config.transport, self._converse, listener=listener, task_status=task_status
        )


async def serve_stream(stream: trio.abc.Stream, config: AgentConfig | None = None) -> None:
    """Build an agent from ``config``, run it, and serve ``stream`` with it."""
    async with Agent(config) as agent:
        await agent.serve(stream)
