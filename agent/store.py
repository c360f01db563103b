"""The session store: open file handles, their ids, their limit and their cleanup.

Handles belong to the agent, not to one connection: as with qemu-ga, a host
that reconnects goes on using the handles it opened. Ids never repeat, even
across restarts: the counter lives in the state directory (qemu-ga's
``qga.state`` file, same format, so a switch between the two agents keeps
it) and is saved before a handle is handed out.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.errors import GenericError, os_error_text
from agent.ownfiles import read_own_file

FIRST_HANDLE = 1000
STATE_FILE = "qga.state"
DEFAULT_MAX_HANDLES = 1024


@dataclass(eq=False)
class OpenFile:
    """One guest file opened by a host: a raw, unbuffered, non-blocking descriptor."""

    handle: int
    fd: int
    path: str
    mode: str
    # An error that stopped a write after part of it was done (a full disk):
    # that write answered its short count, the next write on the handle answers this.
    write_error: OSError | None = None

    def close(self) -> None:
        fd, self.fd = self.fd, -1  # the integer is reused by the OS at once
        os.close(fd)


class HandleCounter:
    """The next handle id, persisted in ``statedir/qga.state``."""

    def __init__(self, statedir: str) -> None:
        self.path = Path(statedir) / STATE_FILE
        self._next = max(FIRST_HANDLE, self._load())

    def _load(self) -> int:
        try:
            text = read_own_file(self.path).decode(errors="replace")
        except FileNotFoundError:
            return FIRST_HANDLE
        except OSError as err:
            raise GenericError(f"cannot read {self.path}: {os_error_text(err)}") from err
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "fd_counter" and value.strip().isdigit():
                return int(value)
        return FIRST_HANDLE

    def take(self) -> int:
        """A fresh id; the one after it is on disk before this one is returned."""
        handle = self._next
        self._save(handle + 1)
        self._next = handle + 1
        return handle

    def _save(self, next_handle: int) -> None:
        """Replace the state file atomically: a crash leaves the old or the new one."""
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".qga.state.")
        except OSError as err:
            raise self._failure(err) from err
        try:
            with os.fdopen(fd, "w") as state:
                state.write(f"[global]\nfd_counter={next_handle}\n")
            os.replace(tmp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._failure(err) from err

    def _failure(self, err: OSError) -> GenericError:
        return GenericError(
            f"failed to save the handle counter in {self.path}: {os_error_text(err)}"
        )


class HandleStore:
    """Open files by handle, with a limit on how many may be open at once."""

    def __init__(self, statedir: str, max_handles: int = DEFAULT_MAX_HANDLES) -> None:
        self._statedir = statedir
        self._counter: HandleCounter | None = None  # read on first use
        self.max_handles = max_handles
        self._files: dict[int, OpenFile] = {}

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[OpenFile]:
        return iter(list(self._files.values()))

    def check_room(self) -> None:
        if len(self._files) >= self.max_handles:
            raise GenericError(
                f"too many open files: the limit of {self.max_handles} handles is reached;"
                " close some with guest-file-close"
            )

    def add(self, fd: int, path: str, mode: str) -> OpenFile:
        """Store an open descriptor under a new handle (closing it if none can be had)."""
        try:
            self.check_room()
            if self._counter is None:
                self._counter = HandleCounter(self._statedir)
            handle = self._counter.take()
        except BaseException:
            os.close(fd)
            raise
        opened = OpenFile(handle, fd, path, mode)
        self._files[handle] = opened
        return opened

    def get(self, handle: int) -> OpenFile:
        try:
            return self._files[handle]
        except KeyError:
            raise GenericError(f"handle '{handle}' has not been found") from None

    def remove(self, handle: int) -> OpenFile:
        opened = self.get(handle)
        del self._files[handle]
        return opened

    def close_all(self) -> None:
        """Close every handle (when the agent stops). Written data is already in the kernel."""
        for opened in self._files.values():
            with contextlib.suppress(OSError):
                opened.close()
        self._files.clear()
