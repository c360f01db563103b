"""Work done with a guest user's file-system identity, in a thread of its own.

Linux keeps the file-system uid and gid (``setfsuid``/``setfsgid``) and the
supplementary groups per thread: the kernel checks every path, open and
create of that thread as the user's, while the rest of the agent stays root.
This is how OpenSSH reads ``authorized_keys`` and how ``su`` checks a home.

glibc's ``setgroups()`` (and so ``os.setgroups``) changes every thread of the
process, so the groups are set with the raw system call, which changes only
the calling thread. ``setfsuid``/``setfsgid`` are plain system calls in glibc.

The work runs in an :class:`OwnThread`, a new thread that ends with it (never
a pooled worker), so no other work ever runs with the changed identity:
``FsGuard.call(..., own_thread=NAME)`` starts one, under the guard's deadline
and bound on threads, and :func:`acting_as` refuses any other thread.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


class OwnThread(threading.Thread):
    """A thread started for one call, which ends with it: the only kind of thread
    whose file identity :func:`acting_as` changes."""


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

    Only in an :class:`OwnThread`: the event loop's thread and pooled workers
    are refused. A thread started within the block inherits the identity, as
    a child process would.
    """
    if not isinstance(threading.current_thread(), OwnThread):
        raise RuntimeError("the file-system identity is changed only in a thread of its own")
    saved_ids, saved_groups = current_fs_ids(), tuple(os.getgroups())
    try:
        _set_groups(identity.groups)
        _set_fs_ids(identity.uid, identity.gid)
        yield
    finally:
        # The thread is about to end anyway; still, leave it as it was found.
        _set_fs_ids(*saved_ids)
        _set_groups(saved_groups)
