"""What a handler may see of the agent: its configuration, commands and state."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.fsfreeze.freezer import Freezer
from agent.fsguard import FsGuard
from agent.policy import CommandPolicy
from agent.processes import ProcessStore
from agent.registry import Registry
from agent.store import HandleStore
from agent.sysinfo.fstrim import Trim, fitrim
from agent.system import Clock, Executor, ProcessExecutor, SystemClock, SystemRoot
from agent.tasks import BackgroundTasks


@dataclass
class AgentState:
    """State shared by every session of one agent."""

    freezer: Freezer

    @property
    def frozen(self) -> bool:
        """Guest filesystems are (being) frozen: most commands are refused."""
        return self.freezer.frozen


@dataclass
class AgentContext:
    """Passed to every handler as its first argument."""

    config: AgentConfig
    registry: Registry
    policy: CommandPolicy
    store: HandleStore
    state: AgentState
    executor: Executor = field(default_factory=ProcessExecutor)  # runs system commands
    root: SystemRoot = field(default_factory=SystemRoot)  # where system files are
    clock: Clock = field(default_factory=SystemClock)  # sets the system time
    trim: Trim = fitrim  # FITRIM on a mountpoint (guest-fstrim)
    processes: ProcessStore = field(default_factory=ProcessStore)  # guest-exec children
    tasks: BackgroundTasks = field(default_factory=BackgroundTasks)  # outlive their command
    fs: FsGuard = field(default_factory=FsGuard)  # filesystem calls with a deadline
