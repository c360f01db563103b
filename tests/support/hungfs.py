"""A FUSE filesystem that hangs on command: the suite's stand-in for a dead NFS server.

Run as its own process (a FUSE daemon blocked in the test process would
deadlock the test itself)::

    python tests/support/hungfs.py MOUNTPOINT [--blkdev DEVICE]

It serves one directory holding ``data`` (DATA_SIZE bytes, writable, kept in
memory). Lines on its standard input steer it: ``hold`` makes every
operation after it block until ``release``. With ``--blkdev`` it mounts as
``fuseblk`` on DEVICE (a loop device), which is what disk and filesystem
walkers take for a real disk. It exits when its standard input closes; the
kernel then fails whatever was still waiting on it (the connection aborts).
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import threading
import time
from typing import Any

import mfusepy

DATA_SIZE = 4096
BLOCK_SIZE = 4096
BLOCKS = 2048  # what statfs reports: 8 MiB, half of it free


class HungFS(mfusepy.Operations):  # type: ignore[misc]
    """One file; every operation waits at the gate first."""

    use_ns = True

    def __init__(self) -> None:
        self.open_gate = threading.Event()
        self.open_gate.set()
        self.data = bytearray(b"x" * DATA_SIZE)
        self.mutex = threading.Lock()

    def _gate(self) -> None:
        self.open_gate.wait()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self._gate()
        now = time.time_ns()
        times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
        if path == "/data":
            return {
                "st_mode": stat.S_IFREG | 0o644,
                "st_nlink": 1,
                "st_size": len(self.data),
                **times,
            }
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        self._gate()
        return [".", "..", "data"]

    def opendir(self, path: str) -> int:
        self._gate()
        return 0

    def open(self, path: str, flags: int) -> int:
        self._gate()
        if path != "/data":
            raise mfusepy.FuseOSError(errno.ENOENT)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._gate()
        with self.mutex:
            return bytes(self.data[offset : offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._gate()
        with self.mutex:
            end = offset + len(data)
            if end > len(self.data):
                self.data.extend(bytes(end - len(self.data)))
            self.data[offset:end] = data
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._gate()
        with self.mutex:
            del self.data[length:]
        return 0

    def flush(self, path: str, fh: int) -> int:
        self._gate()
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._gate()
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0  # never blocks: the kernel sends it after close() has returned

    def statfs(self, path: str) -> dict[str, int]:
        self._gate()
        return {
            "f_bsize": BLOCK_SIZE,
            "f_frsize": BLOCK_SIZE,
            "f_blocks": BLOCKS,
            "f_bfree": BLOCKS // 2,
            "f_bavail": BLOCKS // 2,
            "f_namemax": 255,
        }


def _steer(filesystem: HungFS) -> None:
    for line in sys.stdin:
        if line.strip() == "hold":
            filesystem.open_gate.clear()
        elif line.strip() == "release":
            filesystem.open_gate.set()
        print(line.strip(), flush=True)  # acknowledged
    os._exit(0)  # the kernel aborts the connection: every waiter gets ENOTCONN


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("--blkdev", help="mount as fuseblk on this block device")
    args = parser.parse_args()
    filesystem = HungFS()
    threading.Thread(target=_steer, args=(filesystem,), daemon=True).start()
    options: dict[str, Any] = {"foreground": True, "fsname": args.blkdev or "hungfs"}
    if args.blkdev:
        options["blkdev"] = True
    mfusepy.FUSE(filesystem, args.mountpoint, **options)


if __name__ == "__main__":
    main()
