"""QEMU as a child that cannot outlive us.

QEMU gets ``PR_SET_PDEATHSIG``: the kernel kills it when its parent dies, even
by SIGKILL, so a launcher killed without warning leaves no VM spinning. The
"parent" there is the thread that forked: so QEMU is started, and waited for,
by one worker thread that lives exactly as long as it does (Trio's
``open_process`` forks in a thread it may retire while QEMU runs). QEMU runs in
a session of its own: the terminal's Ctrl-C is not for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

PR_SET_PDEATHSIG = 1
STOP_GRACE = 5.0  # seconds QEMU has to quit on SIGTERM before SIGKILL


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, before exec)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Qemu:
    """A running QEMU: its pid, and its exit status once it has ended."""

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
        """SIGTERM (QEMU quits at once), SIGKILL if it has not within STOP_GRACE."""
        if self.returncode is None:
            self._popen.terminate()
            with trio.move_on_after(STOP_GRACE):
                await self.wait()
        if self.returncode is None:
            self._popen.kill()
            await self.wait()


@contextlib.asynccontextmanager
async def running_qemu(
    command: Sequence[str], *, inherited: Sequence[int], log: Path
) -> AsyncIterator[Qemu]:
    """QEMU started with the file descriptors ``inherited`` and its output in ``log``;
    stopped and reaped when the block ends, however it ends."""

    async def keeper(task_status: trio.TaskStatus[Qemu]) -> None:
        token = trio.lowlevel.current_trio_token()

        def spawn_and_wait() -> int:
            with open(log, "wb") as output:
                popen = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    pass_fds=tuple(inherited),
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            handle = Qemu(popen)
            trio.from_thread.run_sync(task_status.started, handle, trio_token=token)
            returncode = popen.wait()
            trio.from_thread.run_sync(handle._end, returncode, trio_token=token)
            return returncode

        await trio.to_thread.run_sync(spawn_and_wait)

    async with trio.open_nursery() as nursery:
        qemu: Qemu = await nursery.start(keeper)
        try:
            yield qemu
        finally:
            with trio.CancelScope(shield=True):
                await qemu.stop()
