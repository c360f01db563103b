"""The guest's root over virtiofs: ``virtiofsd`` beside QEMU, sharing this machine's ``/``.

virtiofsd (QEMU's C one, ``/usr/lib/qemu/virtiofsd`` on Debian 12) runs as root
only, and has no read-only mode: it runs in a mount namespace of its own in
which every mount is read-only (``mount_setattr``, recursive), so that even a
guest that remounts its root read-write cannot change a file of this machine.
It gets the listening end of its vhost-user socket as a file descriptor, QEMU
the other end already connected (see :mod:`.qemu`): the socket's path, in the
VM's directory, is removed as soon as both ends are made. Like QEMU, it cannot
outlive the launcher (:mod:`.process`); it is stopped after QEMU.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

from agent.host.vm.config import VmConfig
from agent.host.vm.errors import VmError
from agent.host.vm.groups import single_error
from agent.host.vm.process import PR_SET_PDEATHSIG, Child, running_child

VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd",)  # QEMU's C one: its options are used
# Measured against 9p on this project's machine (docs/vm.md, "The root"): "auto"
# takes virtiofs only if it boots faster.
AUTO_PREFERS_VIRTIOFS = False

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (Linux 5.12)

RootFs = Literal["9p", "virtiofs"]


def virtiofsd_binary() -> str | None:
    """QEMU's virtiofsd (not the Rust one, whose options differ), if installed."""
    for candidate in VIRTIOFSD_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def root_fs(config: VmConfig) -> RootFs:
    """The root's transport for ``config``: as asked, or for "auto" virtiofs when
    it is the faster here (``AUTO_PREFERS_VIRTIOFS``) and can run (virtiofsd, root)."""
    if config.root_fs != "auto":
        return config.root_fs
    if AUTO_PREFERS_VIRTIOFS and virtiofsd_binary() is not None and os.geteuid() == 0:
        return "virtiofs"
    return "9p"


def with_root_fs(config: VmConfig) -> VmConfig:
    """``config`` with its root's transport decided ("auto" no more)."""
    return dataclasses.replace(config, root_fs=root_fs(config))


def check_virtiofs() -> str:
    """virtiofsd's path, or :class:`VmError` saying why virtiofs cannot be had."""
    binary = virtiofsd_binary()
    if binary is None:
        raise VmError(f"root_fs='virtiofs': no virtiofsd ({', '.join(VIRTIOFSD_PATHS)})")
    if os.geteuid() != 0:
        raise VmError("root_fs='virtiofs': virtiofsd runs as root only (9p does not need it)")
    return binary


def virtiofsd_command(binary: str, fd: int) -> list[str]:
    """virtiofsd for ``/`` on the listening socket ``fd``. ``cache=always``: the
    guest keeps what it has read, as 9p's ``cache=loose`` does. ``sandbox=chroot``:
    one process (the default forks into a pid namespace, and the process that
    serves would then be a grandchild of ours, out of our reach)."""
    options = ("source=/", "sandbox=chroot", "cache=always", "log_level=warn")
    return [binary, f"--fd={fd}", *(arg for option in options for arg in ("-o", option))]


def _read_only_view() -> Callable[[], None]:
    """The child's steps before it runs virtiofsd: to die with its parent, then a
    mount namespace of its own where every mount is read-only. The functions are
    looked up here, in the parent: the child only calls them."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl, unshare, mount, syscall = libc.prctl, libc.unshare, libc.mount, libc.syscall
    attributes = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)  # struct mount_attr

    def check(result: int, what: str) -> None:
        if result != 0:
            error = ctypes.get_errno()
            os.write(2, f"trio-qga-vm: {what}: {os.strerror(error)}\n".encode())
            raise OSError(error, what)

    def steps() -> None:  # pragma: no cover (runs in the child, before exec)
        check(prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "prctl(PR_SET_PDEATHSIG)")
        check(unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        check(mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, MS_REC|MS_PRIVATE)")
        read_only = syscall(  # syscall(2) takes longs
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_long(AT_FDCWD),
            ctypes.c_char_p(b"/"),
            ctypes.c_long(AT_RECURSIVE),
            ctypes.byref(attributes),
            ctypes.c_long(ctypes.sizeof(attributes)),
        )
        check(read_only, "mount_setattr(/, AT_RECURSIVE, MOUNT_ATTR_RDONLY)")

    return steps


@dataclasses.dataclass(frozen=True)
class RootServer:
    """virtiofsd running, and QEMU's end of its socket (to inherit)."""

    daemon: Child
    qemu_end: socket.socket
    log: Path


@contextlib.asynccontextmanager
async def running_virtiofsd(run: Path) -> AsyncIterator[RootServer]:
    """virtiofsd sharing ``/`` read-only, for the VM whose directory is ``run``;
    stopped and reaped when the block ends, however it ends."""
    binary = check_virtiofs()
    path, log = run / "virtiofs.sock", run / "virtiofsd.log"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qemu_end,
    ):
        listening.bind(str(path))
        listening.listen(1)
        qemu_end.connect(str(path))  # waits in the backlog until virtiofsd accepts it
        path.unlink()  # both ends made: nobody else may connect
        command = virtiofsd_command(binary, listening.fileno())
        started = False
        try:
            with single_error():
                async with running_child(
                    command, inherited=[listening.fileno()], log=log, before_exec=_read_only_view()
                ) as daemon:
                    started = True
                    listening.close()  # virtiofsd's now
                    yield RootServer(daemon, qemu_end, log)
        except (OSError, subprocess.SubprocessError) as error:
            if started:
                raise
            said = log.read_text(errors="replace").strip() if log.exists() else ""
            raise VmError(f"virtiofsd did not start: {error}\n{said}".rstrip()) from error
