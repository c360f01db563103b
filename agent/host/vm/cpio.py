"""A writer of "newc" cpio archives, the format the Linux kernel unpacks as its initramfs.

Only what an initramfs needs: directories, regular files, symbolic links and
device nodes, owned by root, with the modes given. Archives may be concatenated: the kernel
unpacks them one after the other into the same root, later files replacing
earlier ones (the VM's per-boot configuration is a small archive appended to
the cached one).
"""

from __future__ import annotations

import stat
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class CpioWriter:
    """Entries written in order to ``out``; :meth:`close` writes the trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._inode = 1
        self._written = 0
        self._directories: set[str] = set()

    def directory(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        if path not in self._directories:
            self._parents(path)
            self._directories.add(path)
            self._entry(path, stat.S_IFDIR | mode, b"")

    def _parents(self, path: str) -> None:
        """The kernel creates no missing directory: each comes before what it holds."""
        parent = path.rpartition("/")[0]
        if parent:
            self.directory(parent)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(path, stat.S_IFCHR | mode, b"", device=(major, minor))

    def close(self) -> None:
        self._entry(TRAILER, 0, b"")

    def _entry(self, path: str, mode: int, data: bytes, device: tuple[int, int] = (0, 0)) -> None:
        if path != TRAILER and not stat.S_ISDIR(mode):
            self._parents(path.strip("/"))
        name = path.strip("/").encode() + b"\0"
        fields = (
            self._inode,
            mode,
            0,  # uid
            0,  # gid
            2 if stat.S_ISDIR(mode) else 1,  # nlink
            0,  # mtime: archives of the same content are the same bytes
            len(data),
            0,  # devmajor
            0,  # devminor
            device[0],  # rdevmajor
            device[1],  # rdevminor
            len(name),
            0,  # check
        )
        self._inode += 1
        header = MAGIC + b"".join(b"%08X" % value for value in fields)
        self._write(header + name)
        self._pad()
        self._write(data)
        self._pad()

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._written += len(data)

    def _pad(self) -> None:
        self._write(b"\0" * (-self._written % 4))
