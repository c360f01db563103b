"""What the agent leaves out of its start: modules that serve few commands or
other transports are imported when first needed, not before the first reply.
Each import is start-up time, memory and, in a guest booting under emulation,
files read from a slow disk."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from tests.support.clients import SocketClient
from tests.support.processes import running_agent

pytestmark = pytest.mark.slow

# What only handler groups other than the first import (the groups themselves are
# imported with importlib.import_module, which -X importtime does not show).
GROUPS_ONLY = ("agent.wire.b64", "agent.system.streaming", "agent.system.sysinfo.blockdev")
NOT_AT_START = (
    "psutil",  # guest-get-users, guest-network-get-interfaces, the procinfo plugin
    "trio_serial",  # the isa-serial transport
    "agent.transports.serial",  # the other transports' own modules: this one is unix-listen
    "agent.transports.virtio",
    "agent.transports.vsock",
    "configparser",  # a configuration file, when there is one
    "agent.wire.deep_json",  # values nested deeper than the C JSON codec takes
    "agent.wire.scanner",  # input the framer's fast path cannot take
    "pydantic.main",  # pydantic's model machinery: validators come from pydantic-core
    *GROUPS_ONLY,  # the handler groups a sync does not need: loaded once it is answered
    "trio_qga_procinfo.handlers",  # the example plugin: loaded when a request needs it
    "agent.core.plugins",  # which loads it
    "agent.system.fsidentity",  # the ssh key commands' threads (ctypes, libc)
    # The seams the context builds when a handler first asks (agent.core.context).
    "agent.system.executor",
    "agent.system.processes",
    "agent.system.sysinfo.fstrim",
    "agent.system.mounts",  # read by a freeze, a thaw, or a frozen marker at start
    "agent.daemon.detach",  # a daemon that forks
    "pybase64",  # the first reply or request that carries a payload
)
# What only plugin discovery needs: not imported with --no-plugins, nor when the
# plugin record matches (importlib.metadata imports importlib.resources; the
# agent reads its schema files beside their module). Never before a first reply.
DISCOVERY = ("importlib.metadata", "importlib.resources")


def imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *options: str, then: str | None = None
) -> tuple[set[str], set[str]]:
    """The modules the agent (started with ``options``) imported by the time its
    first reply went out, and by the time it stopped; a sync, then command
    ``then`` if given."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # python -X importtime: to stderr
    with running_agent(tmp_path, "-v", *options) as (proc, sock):  # its cache: tmp_path/cache
        client = SocketClient(sock)
        client.resync(1)
        assert proc.stderr is not None
        # Once quiet after its first reply, the agent loads its other commands.
        log = read_until(proc.stderr, LOADED)
        if then is not None:
            assert "return" in client.execute(then)
        client.close()
        proc.terminate()
        assert proc.wait(10) == 0
        log += proc.stderr.read().decode()
    # -v logs each reply as it goes out; importtime writes each import as it ends.
    before, reply, _ = log.partition("sent reply")
    assert reply, "no reply was logged"
    first = set(re.findall(IMPORTED, before, re.M))
    assert "agent.core.agent" in first  # the log is what we think it is
    return first, set(re.findall(IMPORTED, log, re.M))


IMPORTED = r"^import time:.*\| +([\w.]+)$"
LOADED = "the agent's own commands are loaded"


def read_until(stream: IO[bytes], marker: str, seconds: float = 60) -> str:
    """What ``stream`` gives until ``marker`` has come, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    data = b""
    while marker.encode() not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} did not come within {seconds} s: {data[-2000:]!r}"
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"the agent ended before {marker!r}: {data[-2000:]!r}"
            data += chunk
    return data.decode()


def test_the_first_reply_needs_none_of_these(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, everything = imported(tmp_path, monkeypatch)
    for module in (*NOT_AT_START, *DISCOVERY):
        assert module not in first
    # Once the first reply is out, the agent loads the rest of its own commands;
    # the plugins wait for a request that needs them.
    assert set(GROUPS_ONLY) <= everything
    assert not {"trio_qga_procinfo.handlers", "agent.core.plugins", *DISCOVERY} & everything
    _, listed = imported(tmp_path, monkeypatch, then="guest-info")
    assert {"trio_qga_procinfo.handlers", "importlib.metadata"} <= listed


def test_without_plugins_the_entry_point_machinery_is_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """importlib.metadata (and the email, zipfile and csv modules it brings) only
    serves plugin discovery."""
    _, everything = imported(tmp_path, monkeypatch, "--no-plugins")
    for module in DISCOVERY:
        assert module not in everything


def test_with_a_plugin_record_the_entry_point_machinery_is_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first start to need its plugins discovers them and records them in
    the cache directory; the next, in the same environment, starts from the
    record."""
    _, first = imported(tmp_path, monkeypatch, then="guest-info")
    assert "importlib.metadata" in first
    assert (tmp_path / "cache" / "plugins.json").is_file()
    _, second = imported(tmp_path, monkeypatch, then="guest-info")
    for module in DISCOVERY:
        assert module not in second
    assert "trio_qga_procinfo.handlers" in second


def test_the_configuration_imports_no_implementation() -> None:
    """``trio-qga`` reads its options into ``agent.core.config`` before it loads
    the agent: the defaults live there, so the module loads neither trio nor
    the modules that implement the settings."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import agent.core.config"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = set(re.findall(r"^import time:.*\| +([\w.]+)$", result.stderr, re.M))
    assert {module for module in imported if module.split(".")[0] in ("agent", "trio")} == {
        "agent",
        "agent.version",
        "agent.core",
        "agent.core.config",
        "agent.transports",
        "agent.transports.spec",
    }
