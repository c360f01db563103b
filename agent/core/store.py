"""The session store: open file handles, their ids, their limit and their cleanup.

Handles belong to the agent, not to one connection: as with qemu-ga, a host
that reconnects goes on using the handles it opened. Ids never repeat, even
across restarts: the counter lives in the state directory (qemu-ga's
``qga.state`` file, same format, so a switch between the two agents keeps
it) and is saved before a handle is handed out. An agent without a state
directory (``statedir=None``, an embedding's default) keeps the counter in
memory: its ids start at 1000 again each time it starts, so a host that
outlives the agent could see an id again, naming another file.

The state file is read when the agent starts (``async with``). A damaged one
(not qemu-ga's format, unreadable) is moved aside as ``qga.state.corrupt-TIME``
and the counter goes on from the clock (microseconds since 1970), above any
handle an earlier run can have counted to. A missing or read-only state
directory does not stop the agent: it says so at start, and every
guest-file-open answers the reason until the directory is usable.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import GenericError, os_error_text
from agent.system.ownfiles import read_own_file
from agent.system.userfiles import replace_file

log = logging.getLogger(__name__)

FIRST_HANDLE = 1000
# Handles are the schema's int (int64); qemu-ga aborts when its counter gets here.
COUNTER_END = 2**63 - 1
STATE_FILE = "qga.state"
_COUNTER_LINE = re.compile(r"^\s*fd_counter\s*=\s*([0-9]{1,19})\s*$", re.MULTILINE)


@dataclass(eq=False)
class OpenFile:
    """One guest file opened by a host: a raw, unbuffered, non-blocking descriptor.

    Any session may use any handle, and one may close it while another's call
    on it runs in a worker thread: every call holds the descriptor
    (:meth:`hold`, :meth:`release`), and a close waits for the last of them, so
    that the number, which the OS hands out again at once, never names another
    file under a call. (Methods, not a context manager: a generator-based one
    costs 2 us a call, a tenth of a 4 KiB read.)
    """

    handle: int
    fd: int
    path: str
    mode: str
    # An error that stopped a write after part of it was done (a full disk):
    # that write answered its short count, the next write on the handle answers this.
    write_error: OSError | None = None
    may_block: bool = True  # its I/O may wait on a server: network or FUSE file, block device
    hung: bool = False  # a call on it timed out and has not come back
    _users: int = field(default=0, repr=False)  # calls holding the descriptor (hold())
    _closing: bool = field(default=False, repr=False)  # closed while in use: the last user closes
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hold(self) -> int:
        """The descriptor, open until the matching :meth:`release` (called in
        whatever thread the call runs, in a ``try``/``finally``)."""
        with self._lock:
            if self._closing:
                raise OSError(errno.EBADF, f"handle {self.handle} was closed")
            self._users += 1
            return self.fd

    def release(self) -> None:
        """The end of a :meth:`hold`; the last one after a close closes."""
        with self._lock:
            self._users -= 1
            close_now = self._closing and not self._users
        if close_now:
            with contextlib.suppress(OSError):  # nobody is left to tell
                self._close_fd()

    def close(self) -> None:
        """Close the descriptor, now or, while calls use it, when the last one ends."""
        with self._lock:
            self._closing = True  # no call takes the descriptor from now on
            if self._users:
                return
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self.fd = self.fd, -1  # the integer is reused by the OS at once
        os.close(fd)


class DamagedState(ValueError):
    """The state file holds no counter in qemu-ga's format."""


class HandleCounter:
    """The next handle id, persisted in ``statedir/qga.state`` (in memory only
    when ``statedir`` is None)."""

    def __init__(self, statedir: str | None) -> None:
        self.path = None if statedir is None else Path(statedir) / STATE_FILE
        self._next = FIRST_HANDLE
        if self.path is not None:
            try:
                self._next = max(FIRST_HANDLE, _load(self.path))
            except (OSError, DamagedState) as err:
                self._next = _recover(self.path, err)

    def take(self, in_use: Container[int] = ()) -> int:
        """A fresh id; the one after it is on disk before this one is returned.

        At the counter's end (which only a hand-edited state file reaches) it
        wraps to the lowest handle not open, rather than stop or hand out an
        id the schema cannot carry.
        """
        handle = self._next
        if handle >= COUNTER_END:
            log.warning(
                "handle counter at its end (2^63-1): handles start again at %d", FIRST_HANDLE
            )
            handle = FIRST_HANDLE
        while handle in in_use:
            handle += 1
        self._save(handle + 1)
        self._next = handle + 1
        return handle

    def _save(self, next_handle: int) -> None:
        """Replace the state file atomically: a crash leaves the old or the new one."""
        if self.path is None:
            return
        try:
            replace_file(self.path, b"[global]\nfd_counter=%d\n" % next_handle, durable=False)
        except OSError as err:
            raise GenericError(
                f"failed to save the handle counter in {self.path}: {os_error_text(err)}"
            ) from err


def _load(path: Path) -> int:
    """The counter saved at ``path``; the first handle if there is none yet."""
    try:
        data = read_own_file(path)  # a planted link or FIFO is refused
    except FileNotFoundError:
        if not path.parent.is_dir():
            log.warning(
                "state directory %s does not exist: guest-file-open will fail until it does",
                path.parent,
            )
        elif not os.access(path.parent, os.W_OK):
            log.warning(
                "state directory %s is not writable: guest-file-open will fail until it is",
                path.parent,
            )
        return FIRST_HANDLE
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DamagedState(f"not UTF-8: {err.reason} at byte {err.start}") from err
    found = _COUNTER_LINE.search(text)
    if found is None:
        raise DamagedState("no fd_counter=NUMBER line")
    return int(found.group(1))


def _recover(path: Path, err: OSError | DamagedState) -> int:
    """Keep the damaged file aside; go on from a counter no earlier run reached."""
    reason = os_error_text(err) if isinstance(err, OSError) else str(err)
    aside = path.with_name(f"{STATE_FILE}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    try:
        os.replace(path, aside)
        kept = f"moved aside to {aside}"
    except OSError as move_error:
        kept = f"could not be moved aside: {os_error_text(move_error)}"
    counter = max(FIRST_HANDLE, time.time_ns() // 1000)
    log.error(
        "state file %s is damaged (%s); %s; handles go on from the clock, at %d",
        path,
        reason,
        kept,
        counter,
    )
    return counter


class SessionStore:
    """The session store: the one store of open file handles that every session
    of the agent shares (``ctx.store``), with a limit on how many may be open at
    once. A host that reconnects finds its handles here."""

    def __init__(self, statedir: str | None, max_handles: int) -> None:
        """Built when the agent starts: the counter is read then, to report a damaged file."""
        self._counter = HandleCounter(statedir)
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
            handle = self._counter.take(in_use=self._files)
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
