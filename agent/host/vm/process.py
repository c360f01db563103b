"""QEMU (and virtiofsd) as children that cannot outlive us.

A child gets ``PR_SET_PDEATHSIG``: the kernel kills it when its parent dies, even
by SIGKILL, so a launcher killed without warning leaves no VM spinning. The
"parent" there is the thread that forked: so each child is started, and waited
for, by one worker thread that lives exactly as long as it does (Trio's
``open_process`` forks in a thread it may retire while the child runs). A child
runs in a session of its own: the terminal's Ctrl-C is not for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import trio

PR_SET_PDEATHSIG = 1
STOP_GRACE = 5.0  # seconds a child has to quit on SIGTERM before SIGKILL


def die_with_parent() -> None:  # pragma: no cover (runs in the child, before exec)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """A running child (QEMU, virtiofsd): its pid, and its exit status once it has ended."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self._ended = trio.Event()

    async def wait(self) -> int:
        await self._ended.wait()
        assert self.returncode is not None
        return self.returncode

    def _end(self, returncode: int) -> None:
        self.returncode = returncode
        self._ended.set()

    async def stop(self) -> None:
        """SIGTERM (QEMU and virtiofsd quit at once), SIGKILL if it has not within STOP_GRACE."""
        if self.returncode is None:
            self._popen.terminate()
            with trio.move_on_after(STOP_GRACE):
                await self.wait()
        if self.returncode is None:
            self._popen.kill()
            await self.wait()


class _Spawning:
    """What the keeper's thread says about a child's spawn: its handle, or the error that
    kept it from starting; or nothing, if the thread never ran (cancelled first)."""

    def __init__(self) -> None:
        self._said = trio.Event()
        self._child: Child | None = None
        self._error: BaseException | None = None

    def say(self, child: Child | None = None, error: BaseException | None = None) -> None:
        if not self._said.is_set():
            self._child, self._error = child, error
            self._said.set()

    async def child(self) -> Child:
        await self._said.wait()
        if self._error is not None:
            raise self._error
        assert self._child is not None, "the keeper is cancelled only along with us"
        return self._child

    async def stop(self) -> None:
        """Stop the child if it was spawned, once the thread has said whether it was: a
        cancel that lands while it is being spawned must not leave it running."""
        await self._said.wait()
        if self._child is not None:
            await self._child.stop()


@contextlib.asynccontextmanager
async def running_child(
    command: Sequence[str],
    *,
    inherited: Sequence[int],
    log: Path,
    before_exec: Callable[[], None] = die_with_parent,
) -> AsyncIterator[Child]:
    """``command`` started with the file descriptors ``inherited`` and its output in
    ``log``; stopped and reaped when the block ends, however it ends.
    ``before_exec`` runs in the child before it runs ``command``: it must set
    ``PR_SET_PDEATHSIG`` as :func:`die_with_parent`, the default, does."""
    spawning = _Spawning()

    async def keeper() -> None:
        token = trio.lowlevel.current_trio_token()

        def spawn_and_wait() -> None:
            try:
                with open(log, "wb") as output:
                    popen = subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        pass_fds=tuple(inherited),
                        start_new_session=True,
                        preexec_fn=before_exec,
                    )
            except BaseException as error:
                trio.from_thread.run_sync(spawning.say, None, error, trio_token=token)
                return
            handle = Child(popen)
            trio.from_thread.run_sync(spawning.say, handle, trio_token=token)
            returncode = popen.wait()
            trio.from_thread.run_sync(handle._end, returncode, trio_token=token)

        try:
            await trio.to_thread.run_sync(spawn_and_wait)
        finally:
            spawning.say()  # if the thread never ran

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper)
        try:
            yield await spawning.child()
        finally:
            with trio.CancelScope(shield=True):
                await spawning.stop()
