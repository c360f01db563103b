"""What a handler may see of the agent: its configuration, commands and state."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.core.config import AgentConfig
from agent.core.policy import CommandPolicy
from agent.core.registry import Registry
from agent.core.store import SessionStore
from agent.core.tasks import BackgroundTasks
from agent.system.executor import Clock, Executor, ProcessExecutor, SystemClock, SystemRoot
from agent.system.fsfreeze.freezer import Freezer
from agent.system.fsguard import FsGuard
from agent.system.processes import ProcessStore
from agent.system.sysinfo.fstrim import Trim, fitrim


@dataclass
class AgentContext:
    """Passed to every handler as its first argument."""

    config: AgentConfig
    registry: Registry
    policy: CommandPolicy
    store: SessionStore
    freezer: Freezer  # ``frozen``: guest filesystems are (being) frozen, most commands refused
    fs: FsGuard  # filesystem calls with a deadline
    executor: Executor = field(default_factory=ProcessExecutor)  # runs system commands
    root: SystemRoot = field(default_factory=SystemRoot)  # where system files are
    clock: Clock = field(default_factory=SystemClock)  # sets the system time
    trim: Trim = fitrim  # FITRIM on a mountpoint (guest-fstrim)
    processes: ProcessStore = field(default_factory=ProcessStore)  # guest-exec children
    tasks: BackgroundTasks = field(default_factory=BackgroundTasks)  # outlive their command
