"""What a handler may see of the agent: its configuration, commands and state.

The seams to the system (the executor, the system root, the clock, FITRIM) and
the guest-exec children are built the first time a handler asks for them, not
with the context: a first reply needs none of them, and their modules take
2.8 ms to import on the host, about 25 times that in a TCG guest
(docs/benchmarks.md, "The agent's start in a TCG guest"). A seam passed in (a
test's) is used as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core.tasks import BackgroundTasks

if TYPE_CHECKING:
    from agent.core.config import AgentConfig
    from agent.core.policy import CommandPolicy
    from agent.core.registry import Registry
    from agent.core.store import SessionStore
    from agent.system.executor import Clock, Executor, SystemRoot
    from agent.system.fsfreeze.freezer import Freezer
    from agent.system.fsguard import FsGuard
    from agent.system.processes import ProcessStore
    from agent.system.sysinfo.fstrim import Trim


class AgentContext:
    """Passed to every handler as its first argument."""

    def __init__(
        self,
        config: AgentConfig,
        registry: Registry,
        policy: CommandPolicy,
        store: SessionStore,
        freezer: Freezer,
        fs: FsGuard,
        *,
        executor: Executor | None = None,
        root: SystemRoot | None = None,
        clock: Clock | None = None,
        trim: Trim | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.policy = policy
        self.store = store
        # freezer.frozen: guest filesystems are (being) frozen, most commands refused
        self.freezer = freezer
        self.fs = fs  # filesystem calls with a deadline
        self.tasks = BackgroundTasks()  # outlive their command
        self._executor = executor
        self._root = root
        self._clock = clock
        self._trim = trim
        self._processes: ProcessStore | None = None

    @property
    def executor(self) -> Executor:
        """Runs system commands."""
        if self._executor is None:
            from agent.system.executor import ProcessExecutor

            self._executor = ProcessExecutor()
        return self._executor

    @property
    def root(self) -> SystemRoot:
        """Where the system's files are."""
        if self._root is None:
            from agent.system.executor import SystemRoot

            self._root = SystemRoot()
        return self._root

    @property
    def clock(self) -> Clock:
        """Sets the system time."""
        if self._clock is None:
            from agent.system.executor import SystemClock

            self._clock = SystemClock()
        return self._clock

    @property
    def trim(self) -> Trim:
        """FITRIM on a mountpoint (guest-fstrim)."""
        if self._trim is None:
            from agent.system.sysinfo.fstrim import fitrim

            self._trim = fitrim
        return self._trim

    @property
    def processes(self) -> ProcessStore:
        """The guest-exec children."""
        if self._processes is None:
            from agent.system.processes import ProcessStore

            self._processes = ProcessStore()
        return self._processes

    async def aclose_processes(self) -> None:
        """Kill and reap the guest-exec children, if a command started any."""
        if self._processes is not None:
            await self._processes.aclose()
