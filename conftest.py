"""Fixtures shared by the whole suite.

``agent_client`` (``tests/support/agents.py``, with ``agent_factory`` and the
``served`` helper) serves a fresh agent on one end of an in-memory stream
pair and hands the test a client on the other end: no sockets, no processes.

fsfreeze safety: freezing the host's root filesystem hangs the machine. No
test may freeze anything but the scratch filesystems of ``tests/support/scratch.py``:
``freeze_guard`` sets ``TRIO_QGA_FREEZE_ALLOW`` for the whole session (every
agent, in this process or started by it, refuses FIFREEZE elsewhere) and
fails the test in which a refusal happened; agents of ``agent_config`` get a
mount table that lists nothing (``/dev/null``).

The machine's own files: ``tests/support/default_paths.py`` fails a test, and the
session, that creates or changes any of the agent's default paths
(``/var/cache/trio-qga``, and ``qemu-ga.pid`` and ``qga.state*`` in
``/var/run``). Agents of ``agent_config`` keep their state in the test's
temporary directory and load no plugin; ``trio-qga`` processes started by a
test get ``-t``, ``--cache-dir`` (and ``-f`` when they write a pid file) in it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import AgentConfig
from agent.system.fsfreeze.ioctl import ALLOW_ENV, REFUSED_ENV

# The fixtures of the suite's support package: tests/support/__init__.py lists its modules.
pytest_plugins = ["tests.support"]


@pytest.fixture(scope="session", autouse=True)
def freeze_guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Only the scratch filesystems may be frozen (they add themselves to the list)."""
    refused = tmp_path_factory.mktemp("freeze-guard") / "refused"
    refused.touch()
    saved = {name: os.environ.get(name) for name in (ALLOW_ENV, REFUSED_ENV)}
    os.environ[ALLOW_ENV] = ""
    os.environ[REFUSED_ENV] = str(refused)
    yield refused
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def no_host_config_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Agents started by the tests ignore this machine's /etc/qemu/qemu-ga.conf."""
    saved = os.environ.get("QGA_CONF")
    os.environ["QGA_CONF"] = str(tmp_path_factory.mktemp("no-conf") / "absent.conf")
    yield
    if saved is None:
        os.environ.pop("QGA_CONF", None)
    else:
        os.environ["QGA_CONF"] = saved


@pytest.fixture(autouse=True)
def no_refused_freeze(freeze_guard: Path) -> Iterator[None]:
    """Fail the test during which any agent tried to freeze outside the scratch."""
    seen = freeze_guard.stat().st_size
    yield
    with open(freeze_guard) as refusals:
        refusals.seek(seen)
        if refused := refusals.read():
            pytest.fail(f"FIFREEZE outside the scratch filesystems: {refused.split()}")


@pytest.fixture
def agent_config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(statedir=str(tmp_path), pidfile=None, mount_table=os.devnull)
