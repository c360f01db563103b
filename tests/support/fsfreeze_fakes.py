"""Fakes for the fsfreeze tests that need no real filesystem: a recording ioctl
seam and mount tables of made-up paths (paths that do not exist, so that not
even a wrongly wired real seam could freeze them), the ``table`` fixture and a
freezer built on them, and a log handler that keeps what it is given. A pytest
plugin of the root ``conftest.py``, for the ``table`` fixture."""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
from pathlib import Path

import pytest

from agent.core.config import KERNEL_MOUNT_TABLE
from agent.system.fsfreeze.freezer import Freezer
from agent.system.fsguard import FsGuard

FAKE = "/qga-test-fake"


def mountinfo_line(
    mount_id: int, mountpoint: str, device: str, fstype: str, source: str, root: str = "/"
) -> str:
    options = f"rw,relatime shared:{mount_id}"
    return f"{mount_id} 1 {device} {root} {mountpoint} {options} - {fstype} {source} rw\n"


# A small guest: a root-like disk, a nested data disk, a bind mount of the
# first disk, proc and tmpfs (never frozen) and an nfs share.
FAKE_TABLE = "".join(
    [
        mountinfo_line(20, f"{FAKE}", "8:1", "ext4", "/dev/sda1"),
        mountinfo_line(21, f"{FAKE}/proc", "0:21", "proc", "proc"),
        mountinfo_line(22, f"{FAKE}/data", "8:17", "xfs", "/dev/sdb1"),
        mountinfo_line(23, f"{FAKE}/data/deep/er", "8:33", "ext4", "/dev/sdc1"),
        mountinfo_line(24, f"{FAKE}/srv", "8:1", "ext4", "/dev/sda1", root="/srv"),
        mountinfo_line(25, f"{FAKE}/run", "0:25", "tmpfs", "tmpfs"),
        mountinfo_line(26, f"{FAKE}/nfs", "0:50", "nfs4", "server:/export"),
    ]
)
FAKE_FREEZE_ORDER = [f"{FAKE}/data/deep/er", f"{FAKE}/data", FAKE]


def write_table(directory: Path, text: str = FAKE_TABLE) -> Path:
    path = directory / "mountinfo"
    path.write_text(text)
    return path


class FakeIoctls:
    """Records every call; filesystems freeze unless told otherwise."""

    def __init__(
        self,
        *,
        fail: dict[str, OSError] | None = None,
        unsupported: tuple[str, ...] = (),
        block: dict[str, threading.Event] | None = None,
        unanswered_thaw: tuple[str, ...] = (),
    ) -> None:
        self.fail = fail or {}
        self.unsupported = unsupported
        self.block = block or {}
        self.unanswered_thaw = unanswered_thaw  # FITHAW fails (EIO): frozen or not, unknown
        self.calls: list[tuple[str, str]] = []
        self.frozen: set[str] = set()
        self.lock = threading.Lock()
        self.blocked = threading.Event()  # set when a freeze starts waiting on ``block``

    def freeze(self, mountpoint: str, device: int | None) -> bool:
        with self.lock:
            self.calls.append(("freeze", mountpoint))
        if mountpoint in self.block:
            self.blocked.set()
            assert self.block[mountpoint].wait(10), "test did not release the freeze"
        if mountpoint in self.fail:
            raise self.fail[mountpoint]
        if mountpoint in self.unsupported:
            return False
        with self.lock:
            self.frozen.add(mountpoint)
        return True

    def thaw(self, mountpoint: str) -> bool:
        with self.lock:
            self.calls.append(("thaw", mountpoint))
            if mountpoint in self.unanswered_thaw:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            if mountpoint in self.frozen:
                self.frozen.remove(mountpoint)
                return True
        return False

    def called(self, action: str) -> list[str]:
        return [path for what, path in self.calls if what == action]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return write_table(tmp_path)


def fake_freezer(tmp_path: Path, table: Path, ioctls: FakeIoctls, **options: object) -> Freezer:
    """No deadline on the fake ioctls: they never hang, and under an autojump
    clock virtual time runs ahead while a worker thread does its work."""
    return Freezer(
        str(tmp_path),
        mount_table=str(table),
        ioctls=ioctls,
        watchdog=False,
        fs=FsGuard(math.inf, mount_table=KERNEL_MOUNT_TABLE),
        **options,  # type: ignore[arg-type]
    )


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
