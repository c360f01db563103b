"""What a handler may see of the agent: its configuration, commands and state."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.policy import CommandPolicy
from agent.registry import Registry
from agent.store import HandleStore
from agent.system import Executor, ProcessExecutor, SystemRoot


@dataclass
class AgentState:
    """State shared by every session of one agent."""

    frozen: bool = False  # guest filesystems are frozen: most commands are refused


@dataclass
class AgentContext:
    """Passed to every handler as its first argument."""

    config: AgentConfig
    registry: Registry
    policy: CommandPolicy
    store: HandleStore
    state: AgentState = field(default_factory=AgentState)
    executor: Executor = field(default_factory=ProcessExecutor)  # runs system commands
    root: SystemRoot = field(default_factory=SystemRoot)  # where system files are
