"""What a guest user can plant in their home against the ssh key commands.

A real scratch user (``tests/support/scratch_user.py``) whose home is under the test's
temporary directory, and a root-only file standing in for /etc/shadow. The agent
runs as root on the real system root and finds the user through NSS, as in a
guest. Each attack must be refused (or made harmless) without the root-only
content reaching the user, in a reply or in any file under their home, and
without any root-owned target changing. Needs root; CI runs it as root.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.handlers import accounts
from agent.system import userfiles
from agent.system.fsidentity import current_fs_ids
from tests.support.agents import AgentFactory, served
from tests.support.guest_data import KEY1, KEY2
from tests.support.scratch_user import RootOnly, ScratchUser, files_holding
from tests.support.system_fakes import RecordingExecutor

pytestmark = pytest.mark.slow

GET, ADD, REMOVE = (
    "guest-ssh-get-authorized-keys",
    "guest-ssh-add-authorized-keys",
    "guest-ssh-remove-authorized-keys",
)
COMMANDS: dict[str, tuple[str, dict[str, object]]] = {
    "get": (GET, {}),
    "add": (ADD, {"keys": [KEY1]}),
    "remove": (REMOVE, {"keys": [KEY1]}),
}
BOUND = 60  # seconds; far more than any answer takes, even on a loaded machine


async def run(
    make: AgentFactory, user: ScratchUser, *calls: tuple[str, dict[str, object]]
) -> list[dict[str, object]]:
    """The replies to ``calls`` for ``user``, then proof the agent still answers."""
    replies = []
    with trio.fail_after(BOUND):
        async with served(make(executor=RecordingExecutor())) as client:
            for name, arguments in calls:
                replies.append(await client.execute(name, {"username": user.name, **arguments}))
            assert await client.execute("guest-ping") == {"return": {}}
    return replies


def assert_nothing_leaked(
    user: ScratchUser,
    root_only: RootOnly,
    before: object,
    replies: list[dict[str, object]],
    planted: Path | None = None,
) -> None:
    for reply in replies:
        assert root_only.content.strip().decode() not in json.dumps(reply)
    assert files_holding(user.home, root_only.content, but=planted) == []
    assert root_only.snapshot() == before


def refused(reply: dict[str, object], path: Path, reason: str) -> bool:
    return reply == {"error": {"class": "GenericError", "desc": f"refusing '{path}': {reason}"}}


@pytest.mark.parametrize("command", ["get", "add", "remove"])
async def test_a_keys_file_linked_to_a_root_only_file_is_not_followed(
    agent_factory: AgentFactory, scratch_user: ScratchUser, root_only: RootOnly, command: str
) -> None:
    scratch_user.make_ssh_dir()
    link = scratch_user.keys_file
    link.symlink_to(root_only.file)
    scratch_user.plant(link)
    before = root_only.snapshot()
    [reply] = await run(agent_factory, scratch_user, COMMANDS[command])
    assert refused(reply, link, "it is a symbolic link")
    assert os.readlink(link) == str(root_only.file)
    assert_nothing_leaked(scratch_user, root_only, before, [reply])


async def test_reset_replaces_a_planted_link_without_reading_it(
    agent_factory: AgentFactory, scratch_user: ScratchUser, root_only: RootOnly
) -> None:
    scratch_user.make_ssh_dir()
    scratch_user.keys_file.symlink_to(root_only.file)
    scratch_user.plant(scratch_user.keys_file)
    before = root_only.snapshot()
    replies = await run(agent_factory, scratch_user, (ADD, {"keys": [KEY1], "reset": True}))
    assert replies == [{"return": {}}]
    path = scratch_user.keys_file
    assert not path.is_symlink()
    assert path.read_text() == f"{KEY1}\n"
    assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (scratch_user.uid, 0o600)
    assert_nothing_leaked(scratch_user, root_only, before, replies)


@pytest.mark.parametrize("command", ["get", "add", "remove"])
async def test_an_ssh_dir_linked_to_a_root_owned_dir_is_not_followed(
    agent_factory: AgentFactory, scratch_user: ScratchUser, root_only: RootOnly, command: str
) -> None:
    scratch_user.ssh_dir.symlink_to(root_only.directory)
    scratch_user.plant(scratch_user.ssh_dir)
    before = root_only.snapshot()
    [reply] = await run(agent_factory, scratch_user, COMMANDS[command])
    assert refused(reply, scratch_user.ssh_dir, "it is a symbolic link")
    assert_nothing_leaked(scratch_user, root_only, before, [reply])


@pytest.mark.parametrize("command", ["get", "add", "remove"])
async def test_a_hard_link_to_a_root_only_file_is_refused(
    agent_factory: AgentFactory, scratch_user: ScratchUser, root_only: RootOnly, command: str
) -> None:
    # What a user can do where fs.protected_hardlinks is off (root does it here).
    scratch_user.make_ssh_dir()
    os.link(root_only.file, scratch_user.keys_file)
    before = root_only.snapshot()
    [reply] = await run(agent_factory, scratch_user, COMMANDS[command])
    assert refused(reply, scratch_user.keys_file, "it has 2 hard links")
    assert_nothing_leaked(scratch_user, root_only, before, [reply], planted=root_only.file)


@pytest.mark.parametrize("command", ["get", "add", "remove"])
async def test_a_root_only_file_whose_other_name_is_gone_stays_unreadable(
    agent_factory: AgentFactory, scratch_user: ScratchUser, root_only: RootOnly, command: str
) -> None:
    """A hard link outlives the removal of the original (as /etc/shadow- is replaced):
    one link, root's, 0600. The user's own identity cannot open it."""
    scratch_user.make_ssh_dir()
    os.link(root_only.file, scratch_user.keys_file)
    root_only.file.unlink()
    [reply] = await run(agent_factory, scratch_user, COMMANDS[command])
    path = scratch_user.keys_file
    assert reply == {
        "error": {
            "class": "GenericError",
            "desc": f"failed to read '{path}': Failed to open file \u201c{path}\u201d:"
            " Permission denied",
        }
    }
    assert path.read_bytes() == root_only.content
    assert path.stat().st_uid == 0
    assert files_holding(scratch_user.home, root_only.content, but=path) == []


@pytest.mark.parametrize("command", ["get", "add", "remove"])
@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path: os.mkfifo(path, 0o600), "a FIFO"),
        (lambda path: os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3)), "a character device"),
    ],
    ids=["fifo", "device"],
)
async def test_a_fifo_or_device_as_keys_file_does_not_hang_the_agent(
    agent_factory: AgentFactory,
    scratch_user: ScratchUser,
    command: str,
    make: Callable[[Path], None],
    kind: str,
) -> None:
    scratch_user.make_ssh_dir()
    make(scratch_user.keys_file)
    scratch_user.plant(scratch_user.keys_file)
    [reply] = await run(agent_factory, scratch_user, COMMANDS[command])  # bounded, then a ping
    assert refused(reply, scratch_user.keys_file, f"it is {kind}, not a regular file")


# --- a user who swaps an entry in the agent's window ---------------------------------


def swap_once(swap: Callable[[], None]) -> Callable[[], None]:
    """``swap`` done the first time the result is called (from the agent's thread),
    by another thread, as by a user's process, while the agent's waits. That
    thread is started here, as root: one started by the agent's thread would
    inherit its identity, the user's, which cannot reach the test's directory."""
    go, done = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def swapper() -> None:
        if go.wait(BOUND):
            try:
                swap()
            except BaseException as err:
                failures.append(err)
            done.set()

    threading.Thread(target=swapper, daemon=True).start()

    def swap_in_the_window() -> None:
        if not go.is_set():
            go.set()
            done.wait(BOUND)
            assert not failures, failures

    return swap_in_the_window


def replace_with(path: Path, plant: Callable[[Path], None]) -> Callable[[], None]:
    def replace() -> None:
        path.unlink()
        plant(path)

    return replace


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        ("link", "it is a symbolic link"),
        ("fifo", "it is a FIFO, not a regular file"),
    ],
)
async def test_a_swap_between_look_and_open_is_caught_on_the_descriptor(
    agent_factory: AgentFactory,
    scratch_user: ScratchUser,
    root_only: RootOnly,
    monkeypatch: pytest.MonkeyPatch,
    plant: str,
    reason: str,
) -> None:
    scratch_user.make_ssh_dir()
    scratch_user.keys_file.write_text(f"{KEY2}\n")
    scratch_user.plant(scratch_user.keys_file)
    makers: dict[str, Callable[[Path], None]] = {
        "link": lambda path: path.symlink_to(root_only.file),
        "fifo": lambda path: os.mkfifo(path, 0o600),
    }

    def planted(path: Path) -> None:
        makers[plant](path)
        scratch_user.plant(path)

    swap = swap_once(replace_with(scratch_user.keys_file, planted))
    real_stat_entry = userfiles.stat_entry

    def look_then_swap(dir_fd: int, name: str) -> os.stat_result:
        status = real_stat_entry(dir_fd, name)
        if name == accounts.AUTHORIZED_KEYS:
            swap()  # the look saw a regular file; the open meets the plant
        return status

    monkeypatch.setattr(userfiles, "stat_entry", look_then_swap)
    before = root_only.snapshot()
    replies = await run(agent_factory, scratch_user, COMMANDS["get"], COMMANDS["add"])
    for reply in replies:
        assert refused(reply, scratch_user.keys_file, reason)
    assert_nothing_leaked(scratch_user, root_only, before, replies)


async def test_a_swap_between_read_and_replace_only_replaces_the_plant(
    agent_factory: AgentFactory,
    scratch_user: ScratchUser,
    root_only: RootOnly,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch_user.make_ssh_dir()
    scratch_user.keys_file.write_text(f"{KEY2}\n")
    scratch_user.plant(scratch_user.keys_file)
    swap = swap_once(
        replace_with(scratch_user.keys_file, lambda path: path.symlink_to(root_only.file))
    )
    real_replace = userfiles.replace_file

    def swap_then_replace(*args: Any, **kwargs: Any) -> None:
        swap()
        real_replace(*args, **kwargs)

    monkeypatch.setattr(userfiles, "replace_file", swap_then_replace)
    before = root_only.snapshot()
    replies = await run(agent_factory, scratch_user, COMMANDS["add"])
    assert replies == [{"return": {}}]
    path = scratch_user.keys_file
    assert not path.is_symlink()
    assert path.read_text() == f"{KEY2}\n{KEY1}\n"
    assert_nothing_leaked(scratch_user, root_only, before, replies)


async def test_an_ssh_dir_swapped_after_it_was_opened_is_not_reached(
    agent_factory: AgentFactory,
    scratch_user: ScratchUser,
    root_only: RootOnly,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agent holds ``~/.ssh`` open: renaming it away and linking a root-owned
    directory in its place sends nothing there."""
    scratch_user.make_ssh_dir()
    scratch_user.keys_file.write_text(f"{KEY2}\n")
    scratch_user.plant(scratch_user.keys_file)
    moved = scratch_user.home / "moved"

    def swap_dir() -> None:
        scratch_user.ssh_dir.rename(moved)
        scratch_user.ssh_dir.symlink_to(root_only.directory)

    swap = swap_once(swap_dir)
    real_read = userfiles.read_file

    def swap_then_read(*args: object) -> bytes | None:
        swap()
        return real_read(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(userfiles, "read_file", swap_then_read)
    before = root_only.snapshot()
    replies = await run(agent_factory, scratch_user, COMMANDS["add"])
    assert replies == [{"return": {}}]
    assert (moved / "authorized_keys").read_text() == f"{KEY2}\n{KEY1}\n"
    assert_nothing_leaked(scratch_user, root_only, before, replies)


# --- the identity ------------------------------------------------------------------------


async def test_only_the_agents_own_thread_takes_the_users_identity(
    agent_factory: AgentFactory, scratch_user: ScratchUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the work runs as the user, every other thread (the event loop's
    included) is still root, with root's groups; afterwards nothing changed."""
    scratch_user.make_ssh_dir()
    scratch_user.keys_file.write_text(f"{KEY2}\n")
    scratch_user.plant(scratch_user.keys_file)
    ours = (current_fs_ids(), os.getgroups())
    inside: list[object] = []
    working, release = threading.Event(), threading.Event()
    real_read = userfiles.read_file

    def observed_read(*args: object) -> bytes | None:
        inside.append((current_fs_ids(), sorted(os.getgroups())))
        working.set()
        release.wait(BOUND)
        return real_read(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(userfiles, "read_file", observed_read)
    with trio.fail_after(BOUND):
        async with (
            served(agent_factory(executor=RecordingExecutor())) as client,
            trio.open_nursery() as nursery,
        ):

            async def get() -> None:
                reply = await client.execute(GET, {"username": scratch_user.name})
                assert reply == {"return": {"keys": [KEY2]}}

            nursery.start_soon(get)
            await trio.to_thread.run_sync(working.wait, BOUND)
            assert (current_fs_ids(), os.getgroups()) == ours  # the event loop's thread
            assert (
                await trio.to_thread.run_sync(lambda: (current_fs_ids(), os.getgroups())) == ours
            )  # a worker thread
            release.set()
    user_groups = sorted(os.getgrouplist(scratch_user.name, scratch_user.gid))
    assert inside == [((scratch_user.uid, scratch_user.gid), user_groups)]
    assert (current_fs_ids(), os.getgroups()) == ours


async def test_new_files_are_made_by_the_user(
    agent_factory: AgentFactory, scratch_user: ScratchUser
) -> None:
    assert await run(agent_factory, scratch_user, COMMANDS["add"]) == [{"return": {}}]
    for path, mode in ((scratch_user.ssh_dir, 0o700), (scratch_user.keys_file, 0o600)):
        status = path.lstat()
        assert (status.st_uid, status.st_gid) == (scratch_user.uid, scratch_user.gid)
        assert stat.S_IMODE(status.st_mode) == mode
    assert scratch_user.keys_file.read_text() == f"{KEY1}\n"
