"""The one runner of blocking OS work: a hung mount never hangs the agent.

A call that can block on a filesystem (open, statvfs, read, write, FIFREEZE,
FITRIM, a walk of /sys, the work in a user's home, ...) runs in a worker
thread under ``--fs-timeout`` (or a deadline of its own). Past it the
thread is abandoned (trio's ``abandon_on_cancel``): the kernel may hold it for
ever (a FUSE or NFS request the server never answers cannot even be killed),
but the command answers. The mount is then remembered as hung, so the next
call on it fails at once instead of spending the deadline again; after
``retry_after`` seconds calls on it are tried again, and the mark goes as soon
as any call on that mount, an abandoned one included, comes back.

Stuck threads are bounded. The calls run under their own capacity limiter,
apart from trio's default one that the rest of the agent uses (an abandoned
thread keeps its token until the kernel lets it go), and once ``max_stuck``
threads are stuck new calls fail at once.

A result that arrives after its call was abandoned (an open that completes
late) is handed to the call's ``discard`` function, which closes the
descriptor or undoes the freeze: nothing is leaked.

Work that takes a guest user's file identity (the ssh key commands, see
``fsidentity``) runs in a thread of its own that ends with it, never a pooled
worker, so that no other work ever runs as that user; it has the deadline and
takes a thread of the same bound as any other call.

What does not come here: reads of /proc and /sys, which the kernel answers
from memory; the system's own files on the root filesystem (os-release,
``/sbin``), which the agent runs from (if that hangs, the agent does); the
agent's own small files in its state directory (the handle counter saved at
each guest-file-open, the frozen marker; ``/var/run`` by default, a tmpfs);
and the small transfers of local files by guest-file-* (see
``agent.handlers.files``), which cost less inline than a thread. A plain
``trio.to_thread`` elsewhere says in a comment why it cannot hang on a
filesystem.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

# agent.system.mounts is imported where the table is read: a first reply does
# not read it (docs/benchmarks.md, "The agent's start in a TCG guest").

MAX_STUCK = 16  # abandoned threads at once, before calls fail fast
RETRY_AFTER = 60.0  # seconds a hung mount fails fast before it is tried again

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class FsTimeout(Exception):
    """A filesystem did not answer in time, or (``fast``: failed at once) is known not to."""

    def __init__(self, mount: str | None, timeout: float, reason: str | None = None) -> None:
        self.mount = mount
        self.timeout = timeout
        self.fast = reason is not None
        where = f"the filesystem at {mount}" if mount else "the filesystem"
        super().__init__(reason or f"{where} did not answer within {timeout:g} s")


class HungMounts:
    """Mounts whose calls timed out, and since when (``time.monotonic()``)."""

    def __init__(self, retry_after: float = RETRY_AFTER) -> None:
        self.retry_after = retry_after
        self._since: dict[str, float] = {}

    def __contains__(self, mount: str) -> bool:
        """Hung, and not yet due for another try."""
        since = self._since.get(mount)
        return since is not None and time.monotonic() - since < self.retry_after

    def __bool__(self) -> bool:
        return bool(self._since)

    def mark(self, mount: str) -> None:
        self._since[mount] = time.monotonic()

    def clear(self, mount: str) -> None:
        if self._since.pop(mount, None) is not None:
            log.warning("%s answers again", mount)


class _NeverStarted(Exception):
    """Raised in a thread that took an abandoned call: nobody waits for it."""


class _Call(Generic[_T]):
    """One call in a worker thread, and what happens to its result when nobody waits."""

    def __init__(self, function: Callable[[], _T], discard: Callable[[_T], object] | None) -> None:
        self._function = function
        self._discard = discard
        self._lock = threading.Lock()
        self._started = False
        self._done = False
        self._has_result = False
        self._result: _T | None = None
        self._abandoned = False
        self._on_late_end: Callable[[], None] = lambda: None

    def run(self) -> _T:
        """In the worker thread. A call abandoned before a thread took it (it
        waited for a free thread past its deadline) never starts."""
        with self._lock:
            if self._abandoned:
                raise _NeverStarted
            self._started = True
        try:
            result = self._function()
        except BaseException:
            self._end(None, has_result=False)
            raise
        self._end(result, has_result=True)
        return result

    def _end(self, result: _T | None, *, has_result: bool) -> None:
        with self._lock:
            self._done = True
            self._result, self._has_result = result, has_result
            abandoned = self._abandoned
        if abandoned:
            self._drop_result()
            self._on_late_end()

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._done

    def abandon(self, on_late_end: Callable[[], None]) -> bool:
        """In trio: nobody will take the result. True if the call is running in its
        thread (``on_late_end`` then runs there when it ends); a call not yet
        started never will."""
        with self._lock:
            self._abandoned = True
            self._on_late_end = on_late_end
            running = self._started and not self._done
        if not running:  # it ended, but the cancellation came first: its result is ours
            self._drop_result()
        return running

    def _drop_result(self) -> None:
        if self._has_result and self._discard is not None:
            try:
                self._discard(self._result)  # type: ignore[arg-type]  # _has_result: a _T
            except OSError as err:
                log.warning("cleaning up after an abandoned call: %s", err)


class FsGuard:
    """Runs blocking OS calls with a deadline, in a bounded set of threads; one per agent."""

    def __init__(
        self,
        timeout: float,
        *,
        mount_table: str,
        max_stuck: int = MAX_STUCK,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        """``timeout`` is ``--fs-timeout``; ``mount_table`` tells which mount a
        path is on (the kernel's table: any file may be opened, not only those a
        freeze may cover)."""
        self.timeout = timeout
        self.max_stuck = max_stuck
        self.hung = HungMounts(retry_after)
        self.mount_table = mount_table
        # Twice max_stuck: the stuck ones leave as many threads for the rest.
        self._limiter = trio.CapacityLimiter(2 * max_stuck)
        self._stuck = 0
        self._stuck_lock = threading.Lock()

    @property
    def stuck(self) -> int:
        """Threads abandoned and still held by the kernel."""
        return self._stuck

    def check(self, mount: str | None) -> None:
        """Fail at once on a mount known to hang, or when too many threads are stuck."""
        if mount is not None and mount in self.hung:
            raise FsTimeout(
                mount,
                self.timeout,
                f"the filesystem at {mount} did not answer within {self.timeout:g} s"
                f" earlier; it is tried again {self.hung.retry_after:g} s after that",
            )
        if self._stuck >= self.max_stuck:
            raise FsTimeout(
                mount, self.timeout, f"{self._stuck} filesystem calls are stuck; try later"
            )

    async def call(
        self,
        mount: str | None,
        function: Callable[[], _T],
        *,
        discard: Callable[[_T], object] | None = None,
        on_late_end: Callable[[], None] = lambda: None,
        fail_fast: bool = True,
        limit: float | None = None,
        own_thread: str | None = None,
    ) -> _T:
        """``function()`` in a worker thread, abandoned after the deadline
        (``limit`` seconds, else the guard's timeout).

        ``mount`` (a mountpoint; None for no particular one) is checked first
        (:meth:`check`, unless ``fail_fast`` is false: a close must be tried)
        and marked hung on a timeout. ``discard`` takes the result of an
        abandoned call that ends after all; ``on_late_end`` runs then too (in
        that thread). ``own_thread`` runs ``function`` in a new thread of that
        name that ends with it, instead of a pooled worker: the only kind of
        thread in which it may take a user's file identity
        (:func:`agent.system.fsidentity.acting_as`). Raises :class:`FsTimeout`.
        """
        if fail_fast:
            self.check(mount)
        call = _Call(function, discard)
        timeout = self.timeout if limit is None else limit
        with trio.move_on_after(timeout):
            try:
                if own_thread is None:
                    result = await trio.to_thread.run_sync(
                        call.run, abandon_on_cancel=True, limiter=self._limiter
                    )
                else:
                    result = await self._in_own_thread(call.run, own_thread)
            except trio.Cancelled:  # the deadline, or from outside (--command-timeout, SIGTERM)
                self._abandon(call, mount, on_late_end)
                raise
            finally:  # an answer, an error included: the mount is alive
                if call.ended and mount is not None:
                    self.hung.clear(mount)
            return result
        if not call.started:  # the mount was never asked: nothing learnt about it
            raise FsTimeout(
                mount,
                timeout,
                f"no thread for filesystem calls was free within {timeout:g} s"
                f" ({self._limiter.borrowed_tokens} busy); try later",
            )
        if mount is not None:
            self.hung.mark(mount)
        log.warning(
            "%s did not answer within %g s; %d call(s) now stuck",
            mount or "a filesystem",
            timeout,
            self._stuck,
        )
        raise FsTimeout(mount, timeout)

    async def _in_own_thread(self, function: Callable[[], _T], name: str) -> _T:
        """``function()`` in a new thread named ``name``, which ends with it.

        The thread holds one of the guard's tokens until it ends, as a pooled
        worker does. It is a daemon: once its waiting task is cancelled, a
        thread that hangs is abandoned and does not keep the agent from stopping.
        """
        token = trio.lowlevel.current_trio_token()
        holder = object()
        await self._limiter.acquire_on_behalf_of(holder)
        ended = trio.Event()
        results: list[_T] = []
        errors: list[BaseException] = []

        def end() -> None:  # in trio
            self._limiter.release_on_behalf_of(holder)
            ended.set()

        def work() -> None:
            try:
                results.append(function())
            except BaseException as err:  # handed to the waiting task, which re-raises it
                errors.append(err)
            with contextlib.suppress(trio.RunFinishedError):  # the agent has stopped
                token.run_sync_soon(end)

        # Only the ssh key commands take a user's identity: its module (which
        # loads libc with ctypes) is not imported before one needs it.
        from agent.system.fsidentity import OwnThread

        try:
            OwnThread(target=work, name=name, daemon=True).start()
        except BaseException:
            self._limiter.release_on_behalf_of(holder)
            raise
        await ended.wait()
        if errors:
            raise errors[0]
        return results[0]

    def _abandon(self, call: _Call[_T], mount: str | None, on_late_end: Callable[[], None]) -> None:
        def late_end() -> None:
            with self._stuck_lock:
                self._stuck -= 1
            if mount is not None:
                self.hung.clear(mount)
            log.info("a call abandoned on %s has ended", mount or "a filesystem")
            on_late_end()

        with self._stuck_lock:
            if call.abandon(late_end):
                self._stuck += 1

    async def call_on_path(
        self,
        path: str,
        function: Callable[[], _T],
        *,
        discard: Callable[[_T], object] | None = None,
        on_late_end: Callable[[], None] = lambda: None,
        fail_fast: bool = True,
    ) -> _T:
        """:meth:`call` for a file at ``path``: the mount table is read only when
        a mount is known to hang (to fail fast) or after a timeout (to mark it)."""
        mount = self.mount_of(path) if self.hung else None

        def late_end() -> None:  # the mount answers again
            if mount is None and (found := self.mount_of(path)) is not None:
                self.hung.clear(found)
            on_late_end()

        try:
            return await self.call(
                mount, function, discard=discard, on_late_end=late_end, fail_fast=fail_fast
            )
        except FsTimeout as err:
            if not err.fast and err.mount is None and (found := self.mount_of(path)) is not None:
                self.hung.mark(found)
                raise FsTimeout(found, err.timeout) from None
            raise

    def may_hang(self, device: int) -> bool:
        """Whether the filesystem of ``device`` (st_dev) has a server that may never
        answer: a network or FUSE one, or one the mount table does not show."""
        from agent.system.mounts import NETWORK_TYPES, MountTableError, read_mount_table

        try:
            mounts = read_mount_table(self.mount_table)
        except MountTableError:
            return True
        types = {mount.fstype for mount in mounts if mount.device == device}
        return not types or any(
            fstype in NETWORK_TYPES or fstype.startswith("fuse") for fstype in types
        )

    def mount_of(self, path: str) -> str | None:
        """The mountpoint ``path`` lies on, from the mount table alone (touching the
        path itself could hang); None if the table cannot be read."""
        from agent.system.mounts import MountTableError, read_mount_table

        try:
            mounts = read_mount_table(self.mount_table)
        except MountTableError:
            return None
        path = os.path.normpath(os.path.join("/", path))
        best: str | None = None
        for mount in mounts:
            point = mount.mountpoint
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and (best is None or len(point) >= len(best)):
                best = point
        return best
