"""Work done with a guest user's file-system identity, in a thread of its own.

Linux keeps the file-system uid and gid (``setfsuid``/``setfsgid``) and the
supplementary groups per thread: the kernel checks every path, open and
create of that thread as the user's, while the rest of the agent stays root.
This is how OpenSSH reads ``authorized_keys`` and how ``su`` checks a home.

glibc's ``setgroups()`` (and so ``os.setgroups``) changes every thread of the
process, so the groups are set with the raw system call, which changes only
the calling thread. ``setfsuid``/``setfsgid`` are plain system calls in glibc.

The work runs in a new thread that ends with it (never one of trio's cached
workers), so no other work ever runs with the changed identity, and the event
loop only waits for it, as long as its caller's deadline allows: a hung
filesystem costs a thread, not the agent.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import trio

_T = TypeVar("_T")

# __NR_setgroups (the 32-bit-id one where there are two) by machine.
_SETGROUPS = {
    "x86_64": 116,
    "aarch64": 159,
    "arm64": 159,
    "riscv64": 159,
    "loongarch64": 159,
    "ppc64le": 81,
    "ppc64": 81,
    "s390x": 206,
    "i386": 206,
    "i686": 206,
    "armv7l": 206,
}

_libc = ctypes.CDLL(None, use_errno=True)


class IdentityError(OSError):
    """The thread could not take (or give back) the user's identity."""


@dataclass(frozen=True)
class Identity:
    """Who the kernel should take a thread for when it touches files."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def current_fs_ids() -> tuple[int, int]:
    """This thread's file-system uid and gid (a failing call returns the current one)."""
    return _libc.setfsuid(-1) & 0xFFFFFFFF, _libc.setfsgid(-1) & 0xFFFFFFFF


def _set_groups(groups: tuple[int, ...]) -> None:
    number = _SETGROUPS.get(platform.machine())
    if number is None:
        raise IdentityError(0, f"cannot set a thread's groups on {platform.machine()}")
    array = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    if _libc.syscall(ctypes.c_long(number), ctypes.c_size_t(len(groups)), array) != 0:
        error = ctypes.get_errno()
        raise IdentityError(error, f"setgroups: {os.strerror(error)}")


def _set_fs_ids(uid: int, gid: int) -> None:
    # The kernel does not report a refused setfsuid/setfsgid: read the ids back.
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    if current_fs_ids() != (uid, gid):
        raise IdentityError(0, f"cannot take the file-system identity {uid}:{gid}")


@contextmanager
def acting_as(identity: Identity) -> Iterator[None]:
    """Within the block, this thread reaches files as ``identity`` would.

    Only in a thread made for the purpose (see :func:`run_in_own_thread`): the
    main thread, which runs the event loop, is refused. A thread started within
    the block inherits the identity, as a child process would.
    """
    if threading.current_thread() is threading.main_thread():
        raise RuntimeError("the file-system identity is never changed on the main thread")
    saved_ids, saved_groups = current_fs_ids(), tuple(os.getgroups())
    try:
        _set_groups(identity.groups)
        _set_fs_ids(identity.uid, identity.gid)
        yield
    finally:
        # The thread is about to end anyway; still, leave it as it was found.
        _set_fs_ids(*saved_ids)
        _set_groups(saved_groups)


async def run_in_own_thread(function: Callable[[], _T], name: str) -> _T:
    """``function()`` in a new thread named ``name``; its result.

    The thread is a daemon: when the waiting task is cancelled (give it a
    deadline), a thread that hangs (a dead network mount, a FUSE server that
    never answers) is abandoned and does not keep the agent from stopping.
    """
    token = trio.lowlevel.current_trio_token()
    finished = trio.Event()
    values: list[_T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            values.append(function())
        except BaseException as err:  # handed to the waiting task, which re-raises it
            errors.append(err)
        try:
            trio.from_thread.run_sync(finished.set, trio_token=token)
        except trio.RunFinishedError:
            pass  # nobody waits any more

    threading.Thread(target=work, name=name, daemon=True).start()
    await finished.wait()
    if errors:
        raise errors[0]
    return values[0]
