"""What a handler may see of the agent: its configuration, commands and state.

The seams to the system (the executor, the system root, the clock, FITRIM) and
the guest-exec children are built the first time a handler asks for them, not
with the context: a first reply needs none of them, and their modules take
2.8 ms to import on the host, about 25 times that in a TCG guest
(docs/benchmarks.md, "The agent's start in a TCG guest"). A seam passed in (a
test's) is used as it is.
"""

from __future__ import annotations

import functools
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
        # A seam passed in stands in the instance's dict, where cached_property
        # looks first: it is never built.
        seams = {"executor": executor, "root": root, "clock": clock, "trim": trim}
        vars(self).update({name: seam for name, seam in seams.items() if seam is not None})

    @functools.cached_property
    def executor(self) -> Executor:
        """Runs system commands."""
        from agent.system.executor import ProcessExecutor

        return ProcessExecutor()

    @functools.cached_property
    def root(self) -> SystemRoot:
        """Where the system's files are."""
        from agent.system.executor import SystemRoot

        return SystemRoot()

    @functools.cached_property
    def clock(self) -> Clock:
        """Sets the system time."""
        from agent.system.executor import SystemClock

        return SystemClock()

    @functools.cached_property
    def trim(self) -> Trim:
        """FITRIM on a mountpoint (guest-fstrim)."""
        from agent.system.sysinfo.fstrim import fitrim

        return fitrim

    @functools.cached_property
    def processes(self) -> ProcessStore:
        """The guest-exec children."""
        from agent.system.processes import ProcessStore

        return ProcessStore()

    async def aclose_processes(self) -> None:
        """Kill and reap the guest-exec children, if a command started any."""
        processes: ProcessStore | None = vars(self).get("processes")
        if processes is not None:
            await processes.aclose()
