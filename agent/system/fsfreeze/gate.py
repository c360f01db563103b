"""The write gate: guest-file writes pass through it, and a freeze waits for them.

The agent's sessions run side by side, and a write another session started
may be under way in a worker thread when a freeze begins. Were FIFREEZE
issued under it, what remains of the write would wait in the kernel for the
thaw and land after it, half the data on either side of the freeze. So each
write holds the gate for its whole length (:meth:`WriteGate.enter`, then
:meth:`WriteGate.leave`, in whatever thread it runs); a freeze closes the
gate, which refuses new writes with a clear error, and waits for those
inside to finish (:meth:`WriteGate.drained`) before the first FIFREEZE. A
write either completes before the freeze or fails without writing anything.
The gate opens again at the thaw.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import trio

from agent.errors import GenericError


class WriteGate:
    """Writes under way, and whether a freeze has closed the way to new ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # writes enter and leave in worker threads
        self._inside = 0
        self._closed = False
        self._on_empty: Callable[[], None] | None = None

    @property
    def inside(self) -> int:
        """Writes under way."""
        return self._inside

    def enter(self) -> None:
        """Before a write (in whatever thread it runs); raises GenericError at
        once when the gate is closed. Each enter is matched by a :meth:`leave`."""
        with self._lock:
            if self._closed:
                raise GenericError(
                    "the guest's filesystems are being frozen (guest-fsfreeze-freeze):"
                    " nothing was written"
                )
            self._inside += 1

    def leave(self) -> None:
        """After the write, whatever became of it."""
        with self._lock:
            self._inside -= 1
            on_empty = self._on_empty if not self._inside else None
        if on_empty is not None:
            on_empty()

    def close(self) -> None:
        """A freeze begins: no new write passes."""
        with self._lock:
            self._closed = True

    def open(self) -> None:
        """Everything is thawed: writes pass again."""
        with self._lock:
            self._closed = False

    async def drained(self) -> None:
        """Wait for the writes under way to end (the caller bounds the wait)."""
        token = trio.lowlevel.current_trio_token()
        empty = trio.Event()

        def wake() -> None:  # in the thread of the last write out
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(empty.set)

        with self._lock:
            if not self._inside:
                return
            self._on_empty = wake
        try:
            await empty.wait()
        finally:
            with self._lock:
                self._on_empty = None
