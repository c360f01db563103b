"""What the agent leaves out of its start: modules that serve few commands or
other transports are imported when first needed, not before the first reply.
Each import is start-up time, memory and, in a guest booting under emulation,
files read from a slow disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.qga_client import SocketClient, running_agent

NOT_AT_START = (
    "psutil",  # guest-get-users, guest-network-get-interfaces, the procinfo plugin
    "trio_serial",  # the isa-serial transport
    "configparser",  # a configuration file, when there is one
    "agent.deep_json",  # values nested deeper than the C JSON codec takes
)


def test_the_first_reply_needs_none_of_these(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # python -X importtime: to stderr
    with running_agent(tmp_path) as (proc, sock):
        client = SocketClient(sock)
        client.resync(1)
        client.close()
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        imported = set(
            re.findall(r"^import time:.*\| +([\w.]+)$", proc.stderr.read().decode(), re.M)
        )
    assert "agent.api" in imported  # the log is what we think it is
    for module in NOT_AT_START:
        assert module not in imported
