"""The embedding API: build an agent, serve it on any ``trio.abc.Stream``.

    agent = Agent(AgentConfig(statedir=tmp))
    await agent.serve(stream)          # until the peer closes the stream

or, in one call, ``await serve_stream(stream)``. A test suite serves one end
of ``trio.testing.memory_stream_pair()`` and talks to the other; a test-VM
harness serves a socket or serial port it opened itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from agent.config import AgentConfig
from agent.context import AgentContext
from agent.dispatch import Dispatcher
from agent.handlers import BUILTIN
from agent.models.schema import SchemaDefs, load_builtin
from agent.plugins import load_plugins
from agent.policy import CommandPolicy
from agent.registry import HandlerSet, Registry
from agent.session import serve_session
from agent.store import HandleStore
from agent.system import Executor, ProcessExecutor, SystemRoot


class Agent:
    """One guest agent: its commands, state and configuration.

    It serves one client at a time, as qemu-ga does: a second :meth:`serve`
    waits until the first session ends.
    """

    def __init__(
        self,
        config: AgentConfig | None = None,
        *,
        handlers: Iterable[HandlerSet] = BUILTIN,
        schema: SchemaDefs | None = None,
        executor: Executor | None = None,
        root: SystemRoot | None = None,
    ) -> None:
        """``executor`` and ``root`` replace the real system for the commands that
        change it (tests pass a recording executor and a scratch directory)."""
        self.config = config or AgentConfig()
        registry = Registry(schema or load_builtin())
        for handler_set in handlers:
            registry.add(handler_set)
        self.plugins = (
            load_plugins(registry, disabled=self.config.disabled_plugins)
            if self.config.plugins
            else []
        )
        policy = CommandPolicy.from_lists(self.config.blocked_rpcs, self.config.allowed_rpcs)
        store = HandleStore(self.config.statedir, self.config.max_handles)
        self.context = AgentContext(
            self.config,
            registry,
            policy,
            store,
            executor=executor or ProcessExecutor(),
            root=root or SystemRoot(),
        )
        self.dispatcher = Dispatcher(self.context)
        self._one_client = trio.Lock()

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release what the agent holds (open file handles, ...).

        Called when the agent stops, SIGTERM included: nothing is left half done.
        """
        self.context.store.close_all()

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve ``stream`` until the peer closes it, then close it."""
        async with self._one_client:
            try:
                await serve_session(stream, self.dispatcher)
            finally:
                await trio.aclose_forcefully(stream)


async def serve_stream(stream: trio.abc.Stream, config: AgentConfig | None = None) -> None:
    """Build an agent from ``config`` and serve ``stream`` with it."""
    await Agent(config).serve(stream)
