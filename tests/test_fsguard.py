"""agent.system.fsguard: deadlines, abandoned calls, hung mounts, the bound on stuck threads.

The blocking call is a function that waits on a ``threading.Event`` the test
sets: no filesystem is needed (tests/test_hung_fs.py does it with FUSE).
"""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from agent.core.config import KERNEL_MOUNT_TABLE
from agent.system.fsguard import FsGuard, FsTimeout
from agent.system.fsidentity import Identity, OwnThread, acting_as

DEADLINE = 0.2


def blocker(gate: threading.Event, result: int = 7) -> int:
    assert gate.wait(10), "the test never released the call"
    return result


async def test_a_call_that_answers_gives_its_result_and_its_errors() -> None:
    guard = FsGuard(DEADLINE, mount_table=KERNEL_MOUNT_TABLE)
    assert await guard.call("/mnt", lambda: 3) == 3
    with pytest.raises(FileNotFoundError):
        await guard.call("/mnt", lambda: open("/nonexistent/x"))  # noqa: SIM115
    assert guard.stuck == 0


async def test_a_hung_call_is_abandoned_and_its_mount_fails_fast_until_it_comes_back() -> None:
    guard = FsGuard(DEADLINE, mount_table=KERNEL_MOUNT_TABLE)
    gate = threading.Event()
    discarded: list[int] = []
    came_back = threading.Event()
    with trio.fail_after(5), pytest.raises(FsTimeout) as caught:
        await guard.call(
            "/mnt",
            lambda: blocker(gate),
            discard=discarded.append,
            on_late_end=came_back.set,
        )
    assert str(caught.value) == "the filesystem at /mnt did not answer within 0.2 s"
    assert not caught.value.fast
    assert guard.stuck == 1
    assert "/mnt" in guard.hung
    with trio.fail_after(DEADLINE / 2), pytest.raises(FsTimeout) as fast:
        await guard.call("/mnt", lambda: 1)
    assert fast.value.fast
    assert "earlier" in str(fast.value)
    assert await guard.call("/other", lambda: 2) == 2  # other mounts are served
    gate.set()
    assert await trio.to_thread.run_sync(came_back.wait, 5)
    assert discarded == [7]  # the late result went to discard: nothing leaks
    assert guard.stuck == 0
    assert "/mnt" not in guard.hung
    assert await guard.call("/mnt", lambda: 1) == 1


async def test_a_hung_mount_is_tried_again_after_a_while() -> None:
    guard = FsGuard(DEADLINE, mount_table=KERNEL_MOUNT_TABLE, retry_after=0.3)
    gate = threading.Event()
    try:
        with pytest.raises(FsTimeout):
            await guard.call("/mnt", lambda: blocker(gate))
        await trio.sleep(0.35)
        assert "/mnt" not in guard.hung  # due for another try
        assert await guard.call("/mnt", lambda: 5) == 5
    finally:
        gate.set()


async def test_stuck_threads_are_bounded() -> None:
    guard = FsGuard(DEADLINE, mount_table=KERNEL_MOUNT_TABLE, max_stuck=2)
    gate = threading.Event()
    try:
        for mount in ("/a", "/b"):
            with pytest.raises(FsTimeout):
                await guard.call(mount, lambda: blocker(gate))
        assert guard.stuck == 2
        with trio.fail_after(DEADLINE / 2), pytest.raises(FsTimeout, match="2 filesystem calls"):
            await guard.call("/c", lambda: 1)
        # trio's own thread limiter is untouched by the stuck ones.
        assert await trio.to_thread.run_sync(lambda: 4) == 4
    finally:
        gate.set()


async def test_a_call_that_never_got_a_thread_is_neither_stuck_nor_a_hung_mount() -> None:
    """When every thread of the guard is busy, a call that waits past its deadline
    for one fails without starting: its mount was never asked."""
    guard = FsGuard(DEADLINE, mount_table=KERNEL_MOUNT_TABLE, max_stuck=1)  # two threads
    gate = threading.Event()
    ran: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            for mount in ("/a", "/b"):  # waited for, well within their own deadline
                nursery.start_soon(partial(guard.call, mount, partial(blocker, gate), limit=10))
            await wait_all_tasks_blocked()  # both hold their thread
            with trio.fail_after(5), pytest.raises(FsTimeout) as caught:
                await guard.call("/c", lambda: ran.append("/c"))
            assert caught.value.fast
            assert str(caught.value) == (
                "no thread for filesystem calls was free within 0.2 s (2 busy); try later"
            )
            assert "/c" not in guard.hung
            assert guard.stuck == 0
            gate.set()
        assert await guard.call("/c", lambda: 3) == 3
        assert ran == []  # the abandoned call never started, even once a thread was free
        assert guard.stuck == 0
    finally:
        gate.set()


async def test_a_call_cancelled_from_outside_is_abandoned_too() -> None:
    guard = FsGuard(10, mount_table=KERNEL_MOUNT_TABLE)
    gate = threading.Event()
    discarded: list[int] = []
    with trio.move_on_after(DEADLINE):
        await guard.call("/mnt", lambda: blocker(gate), discard=discarded.append)
    assert guard.stuck == 1
    assert "/mnt" not in guard.hung  # not our deadline: nothing learnt about the mount
    gate.set()
    with trio.fail_after(5):
        while guard.stuck:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert discarded == [7]


# --- calls in a thread of their own (the work of the account commands) -------------


async def test_an_own_thread_call_runs_in_a_new_thread_that_ends_with_it() -> None:
    guard = FsGuard(DEADLINE, mount_table=KERNEL_MOUNT_TABLE)
    threads: list[threading.Thread] = []

    def note_thread() -> str:
        threads.append(threading.current_thread())
        return threading.current_thread().name

    for _ in range(2):
        assert await guard.call(None, note_thread, own_thread="keys alice") == "keys alice"
    assert all(isinstance(thread, OwnThread) for thread in threads)
    assert threads[0] is not threads[1]
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    with pytest.raises(FileNotFoundError):  # errors reach the caller
        await guard.call(None, lambda: open("/nonexistent/x"), own_thread="x")  # noqa: SIM115
    pooled = await guard.call(None, threading.current_thread)
    assert not isinstance(pooled, OwnThread)


async def test_only_an_own_thread_may_take_a_users_identity() -> None:
    """The event loop's thread, trio's workers and the guard's pooled workers
    run other work after this call: none of them may change its identity."""
    guard = FsGuard(DEADLINE, mount_table=KERNEL_MOUNT_TABLE)

    def take() -> None:
        with acting_as(Identity(4242, 4242, (4242,))):
            pytest.fail("the identity was changed outside an own thread")

    refused = pytest.raises(RuntimeError, match="only in a thread of its own")
    with refused:
        take()
    with refused:
        await trio.to_thread.run_sync(take)
    with refused:
        await guard.call(None, take)


async def test_own_threads_have_the_deadline_and_the_bound_of_the_others() -> None:
    # Two threads; one stuck is the limit.
    guard = FsGuard(DEADLINE, mount_table=KERNEL_MOUNT_TABLE, max_stuck=1)
    gate = threading.Event()
    try:
        async with trio.open_nursery() as nursery:
            for name in ("a", "b"):
                call = partial(guard.call, None, partial(blocker, gate), own_thread=name, limit=10)
                nursery.start_soon(call)
            await wait_all_tasks_blocked()  # both hold their thread
            with pytest.raises(FsTimeout, match="no thread for filesystem calls was free"):
                await guard.call(None, lambda: 1, own_thread="c")
            gate.set()
        gate.clear()
        with pytest.raises(FsTimeout, match=r"did not answer within 0\.2 s"):
            await guard.call(None, partial(blocker, gate), own_thread="hung")
        assert guard.stuck == 1
        with pytest.raises(FsTimeout, match="1 filesystem calls are stuck"):
            await guard.call(None, lambda: 1, own_thread="next")
        gate.set()
        with trio.fail_after(5):
            while guard.stuck:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert await guard.call(None, lambda: 2, own_thread="again") == 2
    finally:
        gate.set()


async def test_call_on_path_names_the_mount_from_the_table(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:40 / /mnt/nfs rw - nfs4 server:/ rw\n"
    )
    guard = FsGuard(DEADLINE, mount_table=str(table))
    assert guard.mount_of("/mnt/nfs/dir/file") == "/mnt/nfs"
    assert guard.mount_of("/mnt/nfsx") == "/"
    gate = threading.Event()
    try:
        with pytest.raises(FsTimeout, match="the filesystem at /mnt/nfs did not answer"):
            await guard.call_on_path("/mnt/nfs/file", lambda: blocker(gate))
        assert "/mnt/nfs" in guard.hung
        with pytest.raises(FsTimeout, match="earlier"):
            await guard.call_on_path("/mnt/nfs/other", lambda: 1)
        assert await guard.call_on_path("/etc/hostname", lambda: 1) == 1
    finally:
        gate.set()


def test_which_filesystems_may_hang(tmp_path: Path) -> None:
    """Small transfers run inline on local filesystems only."""
    table = tmp_path / "mountinfo"
    table.write_text(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "2 1 0:40 / /mnt/nfs rw - nfs4 server:/ rw\n"
        "3 1 0:41 / /mnt/ssh rw - fuse.sshfs host: rw\n"
        "4 1 7:0 / /mnt/blk rw - fuseblk /dev/loop0 rw\n"
    )
    guard = FsGuard(DEADLINE, mount_table=str(table))
    assert not guard.may_hang(os.makedev(8, 1))
    for major, minor in ((0, 40), (0, 41), (7, 0), (0, 99)):  # 0:99: not in the table
        assert guard.may_hang(os.makedev(major, minor))
