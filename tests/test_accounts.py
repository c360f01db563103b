"""guest-set-user-password and the ssh key commands, in a scratch root.

chpasswd is never run (the executor records it); authorized_keys files live
in a scratch root whose /etc/passwd lists made-up users.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from agent.handlers import accounts
from agent.system import userfiles
from agent.system.executor import CommandResult, SystemRoot
from tests.support.agents import AgentFactory
from tests.support.agents import served as serve_agent
from tests.support.clients import StreamClient
from tests.support.guest_data import KEY1, KEY2, VIRSH_KEYS
from tests.support.system_fakes import OK, RecordingExecutor, User, exited, scratch_root

KEY3 = "ecdsa-sha2-nistp256 AAAAE2VjZHNhThree three@host"


@asynccontextmanager
async def served(
    make: AgentFactory, executor: RecordingExecutor, root: SystemRoot | None = None
) -> AsyncIterator[StreamClient]:
    async with serve_agent(make(executor=executor, root=root)) as client:
        yield client


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- passwords ----------------------------------------------------------------------


@pytest.mark.parametrize(("crypted", "argv"), [(False, ("chpasswd",)), (True, ("chpasswd", "-e"))])
async def test_set_password_feeds_chpasswd(
    agent_factory: AgentFactory, crypted: bool, argv: tuple[str, ...]
) -> None:
    executor = RecordingExecutor(default=OK)
    password = "$6$salt$hash" if crypted else "s3cret pass"
    async with served(agent_factory, executor) as client:
        reply = await client.execute(
            "guest-set-user-password",
            {"username": "alice", "password": b64(password), "crypted": crypted},
        )
    assert reply == {"return": {}}
    [run] = executor.runs
    assert run.argv == argv
    assert run.stdin == f"alice:{password}\n".encode()


@pytest.mark.parametrize(
    ("username", "password", "text"),
    [
        ("alice", b64("a\nb"), "forbidden characters in raw password"),
        ("alice", b64("a\0b"), "forbidden characters in raw password"),
        ("al:ice", b64("x"), "forbidden characters in username"),
        ("al\nice", b64("x"), "forbidden characters in username"),
        ("alice", "!!!", "Base64 data contains invalid characters"),
    ],
)
async def test_set_password_refuses_what_chpasswd_would_misread(
    agent_factory: AgentFactory, username: str, password: str, text: str
) -> None:
    executor = RecordingExecutor(default=OK)
    async with served(agent_factory, executor) as client:
        reply = await client.execute(
            "guest-set-user-password",
            {"username": username, "password": password, "crypted": False},
        )
    assert reply["error"]["desc"] == text
    assert executor.runs == []


@pytest.mark.parametrize(
    ("executor", "text"),
    [
        (RecordingExecutor(), "cannot find 'passwd' program in PATH"),
        (
            RecordingExecutor(default=exited(1, b"chpasswd: user 'bob' does not exist")),
            "child process has failed to set user password: chpasswd failed (exit status 1):"
            " chpasswd: user 'bob' does not exist",
        ),
        (
            RecordingExecutor(default=CommandResult(-9, b"", b"")),
            "child process has terminated abnormally: chpasswd failed (killed by signal 9)",
        ),
    ],
)
async def test_set_password_failures(
    agent_factory: AgentFactory, executor: RecordingExecutor, text: str
) -> None:
    async with served(agent_factory, executor) as client:
        reply = await client.execute(
            "guest-set-user-password", {"username": "bob", "password": b64("x"), "crypted": False}
        )
    assert reply["error"]["desc"] == text


# --- authorized keys -----------------------------------------------------------------


@pytest.fixture
def alice(tmp_path: Path) -> User:
    return User("alice", os.getuid(), os.getgid(), "/home/alice")


@pytest.fixture
def root(tmp_path: Path, alice: User) -> SystemRoot:
    root = scratch_root(tmp_path / "root", [alice])
    (root.path(alice.home)).mkdir(parents=True)
    return root


def keys_file(root: SystemRoot, user: User) -> Path:
    return root.path(user.home) / ".ssh" / "authorized_keys"


async def call(
    make: AgentFactory, root: SystemRoot, name: str, **arguments: object
) -> dict[str, object]:
    async with served(make, RecordingExecutor(), root) as client:
        reply: dict[str, object] = await client.execute(name, arguments)
    return reply


async def test_add_creates_ssh_dir_and_file_with_the_right_modes(
    agent_factory: AgentFactory, root: SystemRoot, alice: User
) -> None:
    reply = await call(
        agent_factory, root, "guest-ssh-add-authorized-keys", username="alice", keys=[KEY1, KEY2]
    )
    assert reply == {"return": {}}
    path = keys_file(root, alice)
    assert path.read_text() == f"{KEY1}\n{KEY2}\n"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for item in (path, path.parent):
        assert (item.stat().st_uid, item.stat().st_gid) == (alice.uid, alice.gid)
    assert sorted(os.listdir(path.parent)) == ["authorized_keys"]  # no temporary left


async def test_the_keys_file_is_on_disk_when_the_command_answers(
    agent_factory: AgentFactory, root: SystemRoot, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new file is synced before it takes the old one's place, and ``~/.ssh``
    after: a guest crash after the reply cannot lose the keys nor leave an
    empty file."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    reply = await call(
        agent_factory, root, "guest-ssh-add-authorized-keys", username="alice", keys=[KEY1]
    )
    assert reply == {"return": {}}
    ssh_dir = keys_file(root, alice).parent
    [new_file, directory] = synced
    assert new_file.startswith(f"{ssh_dir}/.authorized_keys.")
    assert directory == str(ssh_dir)


async def test_add_appends_without_duplicates_and_keeps_other_lines(
    agent_factory: AgentFactory, root: SystemRoot, alice: User
) -> None:
    path = keys_file(root, alice)
    path.parent.mkdir(mode=0o755)
    path.write_text(f"# my keys\n{KEY1}\n\n")
    path.chmod(0o644)
    await call(
        agent_factory, root, "guest-ssh-add-authorized-keys", username="alice", keys=[KEY2, KEY1]
    )
    assert path.read_text() == f"# my keys\n{KEY1}\n\n{KEY2}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755  # an existing .ssh is left alone


async def test_add_with_reset_replaces_everything(
    agent_factory: AgentFactory, root: SystemRoot, alice: User
) -> None:
    path = keys_file(root, alice)
    path.parent.mkdir()
    path.write_text(f"{KEY1}\n{KEY2}\n")
    await call(
        agent_factory,
        root,
        "guest-ssh-add-authorized-keys",
        username="alice",
        keys=[KEY3],
        reset=True,
    )
    assert path.read_text() == f"{KEY3}\n"
    await call(
        agent_factory, root, "guest-ssh-add-authorized-keys", username="alice", keys=[], reset=True
    )
    assert path.read_text() == ""


async def test_get_lists_keys_without_comments_or_blank_lines(
    agent_factory: AgentFactory, root: SystemRoot, alice: User
) -> None:
    path = keys_file(root, alice)
    path.parent.mkdir()
    path.write_text(f"{KEY1}\n# comment\n\n  {KEY2}  \n{KEY3}")
    reply = await call(agent_factory, root, "guest-ssh-get-authorized-keys", username="alice")
    assert reply == {"return": {"keys": [KEY1, KEY2, KEY3]}}


async def test_remove_drops_exact_lines_only(
    agent_factory: AgentFactory, root: SystemRoot, alice: User
) -> None:
    path = keys_file(root, alice)
    path.parent.mkdir()
    path.write_text(f"{KEY1}\n{KEY1}\n# a comment\n{KEY2}\n")
    reply = await call(
        agent_factory,
        root,
        "guest-ssh-remove-authorized-keys",
        username="alice",
        keys=[KEY1, KEY3],
    )
    assert reply == {"return": {}}
    assert path.read_text() == f"# a comment\n{KEY2}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_remove_without_a_file_is_a_success(
    agent_factory: AgentFactory, root: SystemRoot, alice: User
) -> None:
    reply = await call(
        agent_factory, root, "guest-ssh-remove-authorized-keys", username="alice", keys=[KEY1]
    )
    assert reply == {"return": {}}
    assert not keys_file(root, alice).parent.exists()


@pytest.mark.parametrize(
    ("key", "why"),
    [("# ssh-rsa AAAA", "is a comment"), ("ssh-rsa AAAA\nssh-rsa BBBB", "has a line break")],
)
@pytest.mark.parametrize(
    "command", ["guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys"]
)
async def test_invalid_keys_are_refused_without_quoting_them(
    agent_factory: AgentFactory, root: SystemRoot, alice: User, key: str, why: str, command: str
) -> None:
    reply = await call(agent_factory, root, command, username="alice", keys=[KEY1, key])
    assert reply == {
        "error": {"class": "GenericError", "desc": f"invalid OpenSSH public key: keys[1] {why}"}
    }
    assert not keys_file(root, alice).parent.exists()


async def test_an_empty_key_from_virsh_is_skipped_when_adding(
    agent_factory: AgentFactory, root: SystemRoot, alice: User
) -> None:
    path = keys_file(root, alice)
    reply = await call(
        agent_factory, root, "guest-ssh-add-authorized-keys", username="alice", keys=VIRSH_KEYS
    )
    assert reply == {"return": {}}
    assert path.read_text() == f"{KEY2}\n"
    path.write_text(f"{KEY1}\n")
    await call(
        agent_factory, root, "guest-ssh-add-authorized-keys", username="alice", keys=VIRSH_KEYS
    )
    assert path.read_text() == f"{KEY1}\n{KEY2}\n"


async def test_an_empty_key_from_virsh_is_skipped_when_removing(
    agent_factory: AgentFactory, root: SystemRoot, alice: User
) -> None:
    path = keys_file(root, alice)
    path.parent.mkdir()
    path.write_text(f"{KEY1}\n\n{KEY2}\n")
    reply = await call(
        agent_factory, root, "guest-ssh-remove-authorized-keys", username="alice", keys=VIRSH_KEYS
    )
    assert reply == {"return": {}}
    assert path.read_text() == f"{KEY1}\n\n"  # the blank line is not a key: kept


async def test_errors_name_the_guest_paths(agent_factory: AgentFactory, root: SystemRoot) -> None:
    reply = await call(agent_factory, root, "guest-ssh-get-authorized-keys", username="alice")
    path = "/home/alice/.ssh/authorized_keys"
    assert reply["error"] == {
        "class": "GenericError",
        "desc": f"failed to read '{path}': Failed to open file \u201c{path}\u201d:"
        " No such file or directory",
    }
    reply = await call(agent_factory, root, "guest-ssh-get-authorized-keys", username="nobody9")
    assert reply["error"] == {
        "class": "GenericError",
        "desc": "failed to lookup user 'nobody9': no such user",
    }


async def test_a_symlinked_ssh_dir_is_not_followed(
    agent_factory: AgentFactory, root: SystemRoot, alice: User, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    keys_file(root, alice).parent.symlink_to(elsewhere)
    reply = await call(
        agent_factory, root, "guest-ssh-add-authorized-keys", username="alice", keys=[KEY1]
    )
    assert "error" in reply
    assert os.listdir(elsewhere) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
async def test_files_belong_to_the_user_not_the_agent(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    bob = User("bob", 4242, 4343, "/home/bob")
    root = scratch_root(tmp_path / "root", [bob])
    root.path(bob.home).mkdir(parents=True)
    os.chown(root.path(bob.home), bob.uid, bob.gid)  # as useradd leaves it
    await call(agent_factory, root, "guest-ssh-add-authorized-keys", username="bob", keys=[KEY1])
    path = keys_file(root, bob)
    for item in (path, path.parent):
        assert (item.stat().st_uid, item.stat().st_gid) == (4242, 4343)


async def test_a_hung_home_costs_a_thread_not_the_agent(
    agent_factory: AgentFactory, root: SystemRoot, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that never returns (a dead NFS home, a FUSE server that does not
    answer) gives an error in bounded time; the agent answers on."""
    keys_file(root, alice).parent.mkdir()
    release = threading.Event()

    def hung_read(*args: object) -> bytes:
        release.wait(60)
        raise OSError(errno.EIO, "released")

    monkeypatch.setattr(userfiles, "read_file", hung_read)
    monkeypatch.setattr(accounts, "USER_FILES_TIMEOUT", 0.5)
    try:
        with trio.fail_after(60):
            async with served(agent_factory, RecordingExecutor(), root) as client:
                reply = await client.execute("guest-ssh-get-authorized-keys", {"username": "alice"})
                assert reply["error"] == {
                    "class": "GenericError",
                    "desc": "guest-ssh-get-authorized-keys for user 'alice' did not finish"
                    " within 0.5 s",
                }
                assert await client.execute("guest-ping") == {"return": {}}
    finally:
        release.set()


async def test_no_password_key_or_file_content_reaches_the_log(
    agent_factory: AgentFactory,
    root: SystemRoot,
    alice: User,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At debug level, through successes and every kind of failure: the log never
    holds a password, a key, or what a keys file holds."""
    caplog.set_level(logging.DEBUG)
    password, secret_key = "pw-MARKER-1", "ssh-ed25519 AAAAkeyMARKER2 x@y"
    content = "ssh-rsa AAAAcontentMARKER3 z@w"
    path = keys_file(root, alice)
    path.parent.mkdir()
    path.write_text(content + "\n")
    (tmp_path / "elsewhere").write_text("secret MARKER4\n")
    failing = RecordingExecutor(default=exited(1, b"chpasswd: line 1: failure"))
    async with served(agent_factory, failing, root) as client:
        for crypted in (False, True):
            arguments = {"username": "alice", "password": b64(password), "crypted": crypted}
            await client.execute("guest-set-user-password", arguments)
        await client.execute("guest-set-user-password", {**arguments, "password": "!!MARKER5"})
        await client.execute("guest-ssh-get-authorized-keys", {"username": "alice"})
        for keys in ([secret_key], [f"# {secret_key}"], [f"{secret_key}\nMARKER6"]):
            for command in ("guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys"):
                await client.execute(command, {"username": "alice", "keys": keys})
        path.unlink()
        path.symlink_to(tmp_path / "elsewhere")
        await client.execute("guest-ssh-get-authorized-keys", {"username": "alice"})
    assert caplog.records  # the session logged at debug level
    assert "MARKER" not in caplog.text
