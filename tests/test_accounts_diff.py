"""The ssh key commands side by side with the real qemu-ga, for a real scratch user.

What virsh sends must give the same result on both agents. The attacks of
``tests/test_accounts_attacks.py`` are run against both as well, to record
what qemu-ga 7.2 does: it follows what the user planted. Its effects stay in
the scratch user's home and the test's own root-only files; where it hangs
(a FIFO), it gets a few seconds and is killed.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import SocketClient
from tests.support.guest_data import KEY1, KEY2, VIRSH_KEYS
from tests.support.processes import running_agent
from tests.support.reference import running_qemu_ga
from tests.support.scratch_user import RootOnly, ScratchUser, files_holding

pytestmark = [pytest.mark.slow, pytest.mark.qemu_ga]

LEASH = 3.0  # seconds qemu-ga gets where it is expected to hang


@contextmanager
def both_agents(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """qemu-ga and ours, each on its own socket: {name: socket}."""
    with (
        running_qemu_ga(tmp_path / "qemu-ga") as theirs,
        running_agent((tmp_path / "trio-qga").resolve()) as (_, ours),
    ):
        yield {"qemu-ga": theirs, "trio-qga": ours}


def fresh_home(user: ScratchUser) -> None:
    """The home as useradd left it: no ~/.ssh."""
    if user.ssh_dir.is_symlink():
        user.ssh_dir.unlink()
    elif user.ssh_dir.exists():
        shutil.rmtree(user.ssh_dir)


def test_what_virsh_sends_gives_what_qemu_ga_gives(
    tmp_path: Path, scratch_user: ScratchUser
) -> None:
    (tmp_path / "trio-qga").mkdir()
    results: dict[str, list[Any]] = {}
    with both_agents(tmp_path) as sockets:
        for name, sock in sockets.items():
            fresh_home(scratch_user)
            client = SocketClient(sock)
            user = {"username": scratch_user.name}
            steps = [
                client.execute("guest-ssh-add-authorized-keys", {**user, "keys": VIRSH_KEYS}),
                scratch_user.keys_file.read_text(),
                client.execute("guest-ssh-add-authorized-keys", {**user, "keys": [KEY1, ""]}),
                client.execute("guest-ssh-get-authorized-keys", user),
                client.execute("guest-ssh-remove-authorized-keys", {**user, "keys": VIRSH_KEYS}),
                client.execute("guest-ssh-get-authorized-keys", user),
            ]
            client.close()
            results[name] = steps
    theirs, ours = results["qemu-ga"], results["trio-qga"]
    assert ours[:2] == theirs[:2] == [{"return": {}}, f"{KEY2}\n"]
    assert ours[2] == theirs[2] == {"return": {}}
    # qemu-ga lists keys last line first; trio-qga in file order (docs/commands.md).
    assert sorted(ours[3]["return"]["keys"]) == sorted(theirs[3]["return"]["keys"]) == [KEY1, KEY2]
    assert ours[4:] == theirs[4:] == [{"return": {}}, {"return": {"keys": [KEY1]}}]


Plant = Callable[[ScratchUser, RootOnly], None]


def _keys_link(user: ScratchUser, root_only: RootOnly) -> None:
    user.make_ssh_dir()
    user.keys_file.symlink_to(root_only.file)
    user.plant(user.keys_file)


def _ssh_dir_link(user: ScratchUser, root_only: RootOnly) -> None:
    user.ssh_dir.symlink_to(root_only.directory)
    user.plant(user.ssh_dir)


def _fifo(user: ScratchUser, root_only: RootOnly) -> None:
    user.make_ssh_dir()
    os.mkfifo(user.keys_file, 0o600)
    user.plant(user.keys_file)


# attack: (plant, command, extra arguments)
ATTACKS: dict[str, tuple[Plant, str, dict[str, object]]] = {
    "get through a linked authorized_keys": (_keys_link, "guest-ssh-get-authorized-keys", {}),
    "add through a linked authorized_keys": (
        _keys_link,
        "guest-ssh-add-authorized-keys",
        {"keys": [KEY1]},
    ),
    "add through a linked ~/.ssh": (
        _ssh_dir_link,
        "guest-ssh-add-authorized-keys",
        {"keys": [KEY1]},
    ),
    "get from a FIFO": (_fifo, "guest-ssh-get-authorized-keys", {}),
}

# What qemu-ga 7.2 does, as measured by this test.
QEMU_GA = {
    "get through a linked authorized_keys": "root-only content in the reply",
    "add through a linked authorized_keys": "root-only content in a file of the user's",
    "add through a linked ~/.ssh": "wrote into the root-owned directory",
    "get from a FIFO": f"no reply within {LEASH:g} s, SIGTERM stopped it",
}


def _outcome(sock: Path, user: ScratchUser, root_only: RootOnly, attack: str) -> str:
    plant, command, arguments = ATTACKS[attack]
    fresh_home(user)
    plant(user, root_only)
    before = root_only.snapshot()
    client = SocketClient(sock, timeout=LEASH)
    try:
        reply = client.execute(command, {"username": user.name, **arguments})
    except TimeoutError:
        return f"no reply within {LEASH:g} s, {_stop_hung(client)}"
    finally:
        client.close()
    secret = root_only.content.strip().decode()
    if secret in str(reply):
        return "root-only content in the reply"
    if files_holding(user.home, root_only.content):
        return "root-only content in a file of the user's"
    if root_only.snapshot() != before:
        return "wrote into the root-owned directory"
    assert "error" in reply, reply
    return "refused"


def _stop_hung(client: SocketClient) -> str:
    """Stop the agent at the other end of ``client`` (one this test started), which
    does not answer: SIGTERM, then SIGKILL if SIGTERM did not stop it in time.
    What it took, for the record."""
    credentials = client.sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    pid, _, _ = struct.unpack("3i", credentials)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + LEASH
    while time.monotonic() < deadline:
        if _gone(pid):
            return "SIGTERM stopped it"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return "SIGTERM ignored"


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as proc_stat:
            return proc_stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_planted_attacks_qemu_ga_falls_for_are_refused(
    tmp_path: Path, scratch_user: ScratchUser, root_only: RootOnly, attack: str
) -> None:
    (tmp_path / "trio-qga").mkdir()
    with both_agents(tmp_path) as sockets:
        theirs = _outcome(sockets["qemu-ga"], scratch_user, root_only, attack)
        ours = _outcome(sockets["trio-qga"], scratch_user, root_only, attack)
        client = SocketClient(sockets["trio-qga"])
        assert client.execute("guest-ping") == {"return": {}}
        client.close()
    assert (theirs, ours) == (QEMU_GA[attack], "refused")


def test_verbose_logs_hold_no_password(tmp_path: Path) -> None:
    """qemu-ga -v logs each request as it came, password included; trio-qga -v
    does not. The password holds a newline, so both refuse it before chpasswd
    would run: no password of this machine changes."""
    raw = f"pw-{secrets.token_hex(8)}\nx"
    password = base64.b64encode(raw.encode()).decode()
    request = {"username": "nobody", "password": password, "crypted": False}
    logs = {name: tmp_path / f"{name}.log" for name in ("qemu-ga", "trio-qga")}
    (tmp_path / "trio-qga").mkdir()
    with (
        running_qemu_ga(tmp_path / "qemu-ga", "-v", "-l", str(logs["qemu-ga"])) as theirs,
        running_agent((tmp_path / "trio-qga").resolve(), "-v", "-l", str(logs["trio-qga"])) as (
            _,
            ours,
        ),
    ):
        for sock in (theirs, ours):
            client = SocketClient(sock)
            reply = client.execute("guest-set-user-password", request)
            client.close()
            assert reply["error"]["desc"] == "forbidden characters in raw password"
    theirs_log, ours_log = (logs[name].read_text() for name in ("qemu-ga", "trio-qga"))
    assert password in theirs_log
    assert "guest-set-user-password" in ours_log  # -v logged the command...
    assert password not in ours_log  # ...but not its password
    assert raw.split("\n")[0] not in ours_log
