"""The processes started by guest-exec: their output, their exit, their cleanup.

Each child runs under a supervisor task in the agent's background nursery
(``ctx.tasks``), so a running child never blocks the agent and outlives the
connection that started it, as with qemu-ga. Its output is kept up to
``OUTPUT_LIMIT`` bytes per stream; the rest is read and dropped, so a chatty
child never stalls on a full pipe.

A child counts as finished when it has exited and its captured output is at
its end, or ``DRAIN_GRACE`` seconds after it exited, whichever comes first: a
daemon it left behind holding stdout (``sh -c 'sleep 25 & echo started'``)
cannot keep its exit from being reported (qemu-ga never reports it). What
comes later is dropped and the pipes are closed.

A child that has exited is not reaped until guest-exec-status has reported
its exit: until then its pid cannot be reused, so the pid a host holds
always names the process it started. The exit is observed with a pidfd and
``waitid(WNOWAIT)``, which leave the zombie in place.

Children run in their own process group; when the agent stops, every group
still known is killed and reaped, so nothing the agent started is left
behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from agent.errors import GenericError, os_error_text

log = logging.getLogger(__name__)
ChildType = TypeVar("ChildType")

OUTPUT_LIMIT = 16 * 1024 * 1024  # per stream, as qemu-ga
READ_SIZE = 64 * 1024
MAX_PROCESSES = 1024  # known (running or unreported) at once
REAP_TIMEOUT = 2.0  # seconds to wait for killed children when the agent stops
DRAIN_GRACE = 1.0  # seconds after a child's exit for its pipes to reach their end


async def spawn(argv: list[str], **options: Any) -> trio.Process:
    """Start ``argv`` (``options`` as for :func:`trio.lowlevel.open_process`),
    with qemu-ga's error texts. A program without a ``#!`` line runs with the
    shell, as execvp() and so qemu-ga (glib) do."""
    path = argv[0]
    try:
        try:
            return await trio.lowlevel.open_process(argv, **options)
        except OSError as error:
            if error.errno != errno.ENOEXEC:
                raise
            return await trio.lowlevel.open_process(["/bin/sh", *argv], **options)
    except OSError as error:
        cwd = options.get("cwd")
        if cwd is not None and error.filename == cwd:
            raise GenericError(f"cannot run in '{cwd}': {os_error_text(error)}") from error
        raise GenericError(
            "Guest agent command failed, error was"
            f" 'Failed to execute child process \u201c{path}\u201d ({os_error_text(error)})'"
        ) from error
    except ValueError as error:  # a NUL in an argument or variable
        raise GenericError(f"Guest agent command failed, error was '{error}'") from error


@dataclass(eq=False)
class Capture:
    """What a child wrote on one stream, up to ``OUTPUT_LIMIT`` bytes."""

    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes | bytearray) -> None:
        room = OUTPUT_LIMIT - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:room]
        self.data += chunk


@dataclass(frozen=True)
class ExitStatus:
    exitcode: int | None = None
    signal: int | None = None


async def wait_for_exit(pid: int) -> ExitStatus:
    """Wait until child ``pid`` has ended, without reaping it."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): a thread waits instead
        pidfd = None
    if pidfd is not None:
        try:
            await trio.lowlevel.wait_readable(pidfd)  # readable: the child has ended
        finally:
            trio.lowlevel.notify_closing(pidfd)
            os.close(pidfd)
        return _exit_status(pid, os.WNOHANG)
    # A plain worker thread: waitid() waits for a child, not for a filesystem.
    return await trio.to_thread.run_sync(_exit_status, pid, 0, abandon_on_cancel=True)


async def process_exit(process: trio.Process) -> ExitStatus:
    """How ``process`` ended, once it has; also when it was reaped under us (the
    agent stopping)."""
    try:
        return await wait_for_exit(process.pid)
    except ChildProcessError:
        code = process.poll() or 0
        return ExitStatus(signal=-code) if code < 0 else ExitStatus(exitcode=code)


def _exit_status(pid: int, flags: int) -> ExitStatus:
    result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | flags)
    if result is None:
        raise RuntimeError(f"child {pid} has not ended")
    if result.si_code == os.CLD_EXITED:
        return ExitStatus(exitcode=result.si_status)
    return ExitStatus(signal=result.si_status)  # CLD_KILLED or CLD_DUMPED


class ExecProcess:
    """One guest-exec child: its pipes, what it wrote, how it ended."""

    def __init__(self, process: trio.Process, out: Capture | None, err: Capture | None) -> None:
        self.process = process
        self.pid = process.pid
        self.out = out
        self.err = err
        self.status: ExitStatus | None = None
        # Exited and every captured stream at its end (qemu-ga waits for both).
        self.finished = False
        self.finished_event = trio.Event()

    async def supervise(self, input_data: bytes | None) -> None:
        """Feed the child, drain its output, note its exit. Runs in the background
        until the child is finished; :meth:`reap` then frees its pid."""
        try:
            async with trio.open_nursery() as feeding:
                if self.process.stdin is not None:
                    feeding.start_soon(self._feed, self.process.stdin, input_data or b"")
                async with trio.open_nursery() as draining:
                    for stream, capture in (
                        (self.process.stdout, self.out),
                        (self.process.stderr, self.err),
                    ):
                        if stream is not None and capture is not None:
                            draining.start_soon(self._drain, stream, capture)
                    self.status = await process_exit(self.process)
                    draining.cancel_scope.deadline = trio.current_time() + DRAIN_GRACE
                if draining.cancel_scope.cancelled_caught:
                    log.info(
                        "guest-exec %d exited, but something it started still holds its"
                        " output: reported without what comes later",
                        self.pid,
                    )
                self.finished = True
                self.finished_event.set()
                # qemu-ga does not wait for stdin either: a child that exited
                # without reading all of its input is finished.
                feeding.cancel_scope.cancel()
        finally:
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    await trio.aclose_forcefully(pipe)

    @staticmethod
    async def _feed(stream: trio.abc.SendStream, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(data)
        await trio.aclose_forcefully(stream)

    @staticmethod
    async def _drain(stream: trio.abc.ReceiveStream, capture: Capture) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while chunk := await stream.receive_some(READ_SIZE):
                capture.add(chunk)

    def kill(self) -> None:
        """SIGKILL the child's process group (it is not reaped, so the id is still its)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def reap(self) -> None:
        """The host was told of the exit: collect the exited child, freeing its pid."""
        self.process.poll()


class Child(Protocol):
    """What the store needs of a child, whichever command started it."""

    pid: int
    process: trio.Process

    def kill(self) -> None: ...


class ProcessStore:
    """Children (of guest-exec and of the streaming exec) by pid, until their exit
    has been reported."""

    def __init__(self, max_processes: int = MAX_PROCESSES) -> None:
        self.max_processes = max_processes
        self._processes: dict[int, Child] = {}

    def __len__(self) -> int:
        return len(self._processes)

    def __iter__(self) -> Iterator[Child]:
        return iter(list(self._processes.values()))

    def check_room(self) -> None:
        if len(self._processes) >= self.max_processes:
            raise GenericError(
                f"too many processes: the limit of {self.max_processes} is reached;"
                " collect the finished ones with guest-exec-status"
            )

    def add(self, process: Child) -> None:
        self._processes[process.pid] = process

    def get(self, pid: int, kind: type[ChildType]) -> ChildType:
        """The child ``pid`` started by the command that makes ``kind``."""
        child = self._processes.get(pid)
        if not isinstance(child, kind):
            raise GenericError("Invalid parameter 'pid'")
        return child

    def remove(self, pid: int) -> None:
        self._processes.pop(pid, None)

    async def aclose(self) -> None:
        """Kill every child still known and reap it (when the agent stops)."""
        processes = list(self._processes.values())
        self._processes.clear()
        for process in processes:
            process.kill()  # the group: also what an exited child left running
        with trio.CancelScope(shield=True), trio.move_on_after(REAP_TIMEOUT):
            for process in processes:
                await process.process.wait()
