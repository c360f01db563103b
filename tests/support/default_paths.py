"""The agent's default paths on this machine, which no test may create or change.

Without options, ``trio-qga`` keeps its plugin record in ``/var/cache/trio-qga``,
and in ``/var/run`` (``/run``) its pid file (``qemu-ga.pid``, with ``-d``), the
handle counter (``qga.state``, and ``qga.state.corrupt-*`` beside a damaged
one) and the frozen marker (``qga.state.isfrozen``). A test names its own
directories for all of them: an agent of the suite that wrote there would
leave root's files that every later agent on the machine reads.

``default_paths_untouched`` fails the test during which any of them was
created, changed or removed, naming it; at the end of the session, the
``default_paths`` fixture compares them once more with how the session found
them (an agent that outlived its test). A conftest may override
``default_paths`` to watch other directories (``tests/test_default_paths.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.core.config import DEFAULT_CACHE_DIR, DEFAULT_PIDFILE, DEFAULT_STATEDIR
from agent.core.store import STATE_FILE

Snapshot = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class DefaultPaths:
    """Where an agent writes when it is told nothing."""

    cache_dir: Path  # all of it
    statedir: Path  # its qga.state* files
    pidfile: Path

    @classmethod
    def of_the_agent(cls) -> DefaultPaths:
        return cls(Path(DEFAULT_CACHE_DIR), Path(DEFAULT_STATEDIR), Path(DEFAULT_PIDFILE))

    def snapshot(self) -> Snapshot:
        """Each of the paths that exists, with what any change to it changes.

        Links are not followed: a link is a change of its own."""
        paths = [self.pidfile, *self.statedir.glob(f"{STATE_FILE}*"), self.cache_dir]
        for directory, subdirectories, files in os.walk(self.cache_dir):
            paths += [Path(directory, name) for name in (*subdirectories, *files)]
        found: Snapshot = {}
        for path in paths:
            try:
                status = os.lstat(path)
            except FileNotFoundError:
                continue
            found[str(path)] = (
                status.st_mode,
                status.st_ino,
                status.st_size,
                status.st_uid,
                status.st_mtime_ns,
                status.st_ctime_ns,
            )
        return found

    def changes(self, before: Snapshot) -> list[str]:
        """What changed since ``before``, one line per path."""
        after = self.snapshot()
        created = [f"created {path}" for path in after.keys() - before.keys()]
        removed = [f"removed {path}" for path in before.keys() - after.keys()]
        changed = [
            f"changed {path}"
            for path in after.keys() & before.keys()
            if after[path] != before[path]
        ]
        return sorted(created + removed + changed)


@pytest.fixture(scope="session")
def default_paths() -> Iterator[DefaultPaths]:
    """The agent's default paths, the same at the end of the session as at its start."""
    paths = DefaultPaths.of_the_agent()
    before = paths.snapshot()
    yield paths
    if changes := paths.changes(before):
        pytest.fail(f"the test session changed the agent's default paths: {changes}")


@pytest.fixture(autouse=True)
def default_paths_untouched(default_paths: DefaultPaths) -> Iterator[None]:
    """Fail the test during which the agent's default paths changed."""
    before = default_paths.snapshot()
    yield
    if changes := default_paths.changes(before):
        pytest.fail(f"this test changed the agent's default paths: {changes}")
