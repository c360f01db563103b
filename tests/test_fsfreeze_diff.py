"""fsfreeze side by side with the real qemu-ga, on the scratch filesystems.

SAFETY: qemu-ga freezes from the host's real mount table and has no guard.
It is only ever sent ``guest-fsfreeze-freeze-list`` with explicit scratch
mountpoints, ``guest-fsfreeze-status`` and ``guest-fsfreeze-thaw``: never
``guest-fsfreeze-freeze`` and never a freeze-list without mountpoints, which
would freeze the host's root. :class:`GuardedClient` enforces this on every
request to either agent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import Reply, SocketClient
from tests.support.processes import running_agent
from tests.support.reference import running_qemu_ga
from tests.support.scratch import BlockedWrite, Scratch, processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.qemu_ga]

SAFE_COMMANDS = {"guest-fsfreeze-status", "guest-fsfreeze-thaw", "guest-fsfreeze-freeze-list"}


class GuardedClient(SocketClient):
    """Refuses, before sending, any request that could freeze a host filesystem."""

    def __init__(self, sock: Path, scratch: Scratch) -> None:
        super().__init__(sock)
        self.scratch = scratch

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Reply:
        assert name in SAFE_COMMANDS, f"{name} must not be sent here"
        if name == "guest-fsfreeze-freeze-list":
            assert arguments is not None
            mountpoints = arguments["mountpoints"]
            assert mountpoints, "a freeze-list without mountpoints freezes everything"
            for path in mountpoints:
                assert Path(path).is_relative_to(self.scratch.base), path
        return super().execute(name, arguments)


@pytest.fixture
def clients(tmp_path: Path, scratch: Scratch) -> Iterator[tuple[GuardedClient, GuardedClient]]:
    """(ours, qemu-ga's), each thawed before it is stopped."""
    with (
        running_qemu_ga(tmp_path / "qemu-ga") as theirs_sock,
        running_agent(tmp_path, "--mount-table", str(scratch.mount_table)) as (_, ours_sock),
    ):
        ours, theirs = GuardedClient(ours_sock, scratch), GuardedClient(theirs_sock, scratch)
        try:
            yield ours, theirs
        finally:
            for client in (ours, theirs):
                with contextlib.suppress(OSError, ValueError):  # the scratch fixture thaws too
                    client.execute("guest-fsfreeze-thaw")
                client.close()


def same(ours: GuardedClient, theirs: GuardedClient, name: str, **arguments: Any) -> Reply:
    """Send one request to both; assert the same reply; return it."""
    args = arguments or None
    reply = ours.execute(name, args)
    assert theirs.execute(name, args) == reply
    return reply


def write_to(directory: Path) -> BlockedWrite:
    return BlockedWrite(directory / f"diff-write-{time.time_ns()}", b"diff")


def test_freeze_list_status_thaw_as_qemu_ga(
    clients: tuple[GuardedClient, GuardedClient], scratch: Scratch
) -> None:
    ours, theirs = clients
    both = [str(scratch.ext4), str(scratch.xfs)]
    for client in (ours, theirs):  # one at a time: each really freezes
        assert client.execute("guest-fsfreeze-status") == {"return": "thawed"}
        assert client.execute("guest-fsfreeze-freeze-list", {"mountpoints": both}) == {"return": 2}
        assert client.execute("guest-fsfreeze-status") == {"return": "frozen"}
        blocked = write_to(scratch.xfs)
        assert blocked.blocked_for(0.3)
        disabled = client.execute("guest-fsfreeze-freeze-list", {"mountpoints": both})
        # The reason is the one text that differs: ours is QEMU 9.1's (docs/compatibility.md).
        reason = "the command is not allowed" if client is ours else "the agent is in frozen state"
        assert disabled == {
            "error": {
                "class": "CommandNotFound",
                "desc": f"Command guest-fsfreeze-freeze-list has been disabled: {reason}",
            }
        }
        assert client.execute("guest-fsfreeze-thaw") == {"return": 2}
        assert blocked.finished_within(10)
    same(ours, theirs, "guest-fsfreeze-status")
    assert same(ours, theirs, "guest-fsfreeze-thaw") == {"return": 0}


def test_freeze_list_of_one_mount_and_of_a_bind_mount(
    clients: tuple[GuardedClient, GuardedClient], scratch: Scratch
) -> None:
    ours, theirs = clients
    for client in (ours, theirs):
        for mountpoint in (scratch.xfs, scratch.ext4):
            reply = client.execute("guest-fsfreeze-freeze-list", {"mountpoints": [str(mountpoint)]})
            assert reply == {"return": 1}
            assert client.execute("guest-fsfreeze-thaw") == {"return": 1}


def test_freeze_list_ignores_invalid_mount_points_as_qemu_ga(
    clients: tuple[GuardedClient, GuardedClient], scratch: Scratch
) -> None:
    """tp-qemu's ["/", "/invalid"], on scratch filesystems: the valid one is frozen."""
    nowhere = str(scratch.base / "invalid")
    for client in clients:
        mixed = {"mountpoints": [str(scratch.xfs), nowhere]}
        assert client.execute("guest-fsfreeze-freeze-list", mixed) == {"return": 1}
        assert client.execute("guest-fsfreeze-status") == {"return": "frozen"}
        assert client.execute("guest-fsfreeze-thaw") == {"return": 1}
        # No valid entry: nothing frozen, 0, and the state stays thawed.
        none_valid = {"mountpoints": [nowhere, str(scratch.tmpfs)]}
        assert client.execute("guest-fsfreeze-freeze-list", none_valid) == {"return": 0}
        assert client.execute("guest-fsfreeze-status") == {"return": "thawed"}


def test_where_ours_differs_sigterm_while_frozen(tmp_path: Path, scratch: Scratch) -> None:
    """qemu-ga ignores SIGTERM while frozen and stays frozen; ours thaws and exits."""
    xfs = [str(scratch.xfs)]
    workdir = tmp_path / "qemu-ga"
    with running_qemu_ga(workdir) as sock:
        theirs = GuardedClient(sock, scratch)
        assert theirs.execute("guest-fsfreeze-freeze-list", {"mountpoints": xfs}) == {"return": 1}
        [pid] = processes_mentioning(str(sock))
        os.kill(pid, signal.SIGTERM)
        blocked = write_to(scratch.xfs)
        assert blocked.blocked_for(0.5)
        assert theirs.execute("guest-fsfreeze-status") == {"return": "frozen"}  # still there
        assert theirs.execute("guest-fsfreeze-thaw") == {"return": 1}
        assert blocked.finished_within(10)
        theirs.close()
    with running_agent(tmp_path, "--mount-table", str(scratch.mount_table)) as (proc, sock):
        ours = GuardedClient(sock, scratch)
        assert ours.execute("guest-fsfreeze-freeze-list", {"mountpoints": xfs}) == {"return": 1}
        blocked = write_to(scratch.xfs)
        assert blocked.blocked_for(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert blocked.finished_within(10)
        ours.close()
