"""Streaming exec: a guest program whose output the host reads while it runs.

The host reads each output stream from an offset (the bytes it has received
so far); what lies before that offset is acknowledged and dropped. Each
stream holds at most ``BUFFER_LIMIT`` bytes the host has not acknowledged:
when it is full the agent stops reading the pipe, so a program whose host
stops reading blocks on its own pipe (backpressure) instead of growing the
agent's memory. A program nobody has read for ``idle_timeout`` seconds is
killed and reaped, and the reason logged.

A read waits (up to the host's bounded ``wait``) until there is something new
and returns at once when there is. The exit is reported once the program has
exited and both streams are at their end and delivered; a daemon the program
left holding its output gets ``DRAIN_GRACE`` seconds of reading time, as for
guest-exec (``agent.system.processes``).

On a pseudo-terminal, stdout and stderr are the terminal (``err`` stays
empty), stdin is written to it, and closing stdin sends the terminal's
end-of-file character, as a user typing Ctrl-D.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import signal
import struct
import termios
from collections.abc import Callable

import trio

from agent.errors import GenericError
from agent.system.processes import DRAIN_GRACE, READ_SIZE, ExitStatus, process_exit

log = logging.getLogger(__name__)

BUFFER_LIMIT = 1024 * 1024  # unacknowledged bytes held per output stream
MAX_WAIT = 10.0  # longest long poll, seconds
WRITE_WAIT = 1.0  # seconds a stdin write waits for room before answering what it took


class Output:
    """One output stream: bytes read from the program that the host has not
    acknowledged, from stream offset ``start`` on."""

    def __init__(self, limit: int = BUFFER_LIMIT) -> None:
        self.limit = limit
        self.data = bytearray()
        self.start = 0
        self.eof = False  # the program's end is in ``data`` (or dropped after the grace)

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    @property
    def room(self) -> int:
        return self.limit - len(self.data)

    def acknowledge(self, offset: int, name: str) -> None:
        """The host has ``offset`` bytes: drop them."""
        if not self.start <= offset <= self.end:
            raise GenericError(
                f"invalid {name} offset {offset}: the agent holds {self.start} to {self.end}"
            )
        del self.data[: offset - self.start]
        self.start = offset


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def take_terminal() -> None:
    """In the child, after setsid(): make stdin (the pty) its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class StreamProcess:
    """One program started by the streaming exec, and its pipes or terminal."""

    def __init__(
        self,
        process: trio.Process,
        *,
        terminal: trio.lowlevel.FdStream | None = None,
        buffer_limit: int = BUFFER_LIMIT,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.terminal = terminal
        self.out = Output(buffer_limit)
        self.err = Output(buffer_limit)
        self.status: ExitStatus | None = None
        self._stdin: trio.lowlevel.FdStream | None
        if terminal is not None:
            self._stdin = terminal
            self.err.eof = True
            sources: list[tuple[trio.abc.ReceiveStream | None, Output]] = [(terminal, self.out)]
        else:
            assert isinstance(process.stdin, trio.lowlevel.FdStream)
            self._stdin = process.stdin
            sources = [(process.stdout, self.out), (process.stderr, self.err)]
        self._sources = [(stream, output) for stream, output in sources if stream is not None]
        self._pipes: list[trio.abc.AsyncResource] = [stream for stream, _ in self._sources]
        self._changed = trio.Event()  # replaced each time it fires
        self._writing = trio.Lock()
        self._exited_at: float | None = None
        self._reading: dict[trio.CancelScope, float] = {}  # receive scope -> host pauses
        self._scope = trio.CancelScope()
        self._idle = trio.CancelScope()  # ends when nobody has read for the idle timeout
        self._idle_timeout = math.inf

    @property
    def finished(self) -> bool:
        """Exited, and both streams at their end: the host can be told once it has
        read what is held."""
        return self.status is not None and self.out.eof and self.err.eof

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -------------------------------------------------------- background --
    async def supervise(self, idle_timeout: float, forget: Callable[[int], None]) -> None:
        """Pump the output, note the exit, kill an unread program. Runs in the
        background until the program is reaped (:meth:`reap`) or killed for
        idleness; ``forget`` removes it from the store then. The same steps as
        guest-exec's :class:`agent.system.processes.ExecProcess`."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_idle, idle_timeout, forget)
                    async with trio.open_nursery() as pumps:
                        for stream, output in self._sources:
                            pumps.start_soon(self._pump, stream, output)
                        self.status = await process_exit(self.process)
                        self._exited_at = trio.current_time()
                        for scope, paused in self._reading.items():
                            scope.deadline = self._drain_deadline(paused)
                    self._notify()
                    await trio.sleep_forever()  # until collected or idle
        finally:
            if self._stdin is not None and self._stdin is not self.terminal:
                self._pipes.append(self._stdin)
            for pipe in self._pipes:
                await trio.aclose_forcefully(pipe)

    def _drain_deadline(self, paused: float) -> float:
        """When a read of the pipe gives up: never while the program runs; after
        its exit, ``DRAIN_GRACE`` seconds of reading time (time spent waiting
        for the host to make room does not count)."""
        if self._exited_at is None:
            return math.inf
        return self._exited_at + DRAIN_GRACE + paused

    async def _pump(self, stream: trio.abc.ReceiveStream, output: Output) -> None:
        paused = 0.0
        while True:
            while output.room <= 0:
                waited_from = trio.current_time()
                await self._changed.wait()
                if self._exited_at is not None:
                    paused += trio.current_time() - max(waited_from, self._exited_at)
            scope = trio.CancelScope(deadline=self._drain_deadline(paused))
            self._reading[scope] = paused
            chunk: bytes | bytearray = b""
            try:
                with scope:
                    chunk = await stream.receive_some(min(READ_SIZE, output.room))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a pty whose last holder closed it answers EIO: its end
            finally:
                del self._reading[scope]
            if scope.cancelled_caught:
                log.info(
                    "exec %d exited, but something it started still holds its output:"
                    " what comes later is dropped",
                    self.pid,
                )
            if not chunk:
                break
            output.data += chunk
            self._notify()
        output.eof = True
        self._notify()

    async def _watch_idle(self, idle_timeout: float, forget: Callable[[int], None]) -> None:
        self._idle_timeout = idle_timeout
        self._idle.deadline = trio.current_time() + idle_timeout
        with self._idle:  # each read moves the deadline
            await trio.sleep_forever()
        log.warning(
            "exec %d: its output was not read for %g s: killed (--exec-idle-timeout)",
            self.pid,
            idle_timeout,
        )
        forget(self.pid)
        self.kill()
        with trio.move_on_after(DRAIN_GRACE + 5):
            await self.process.wait()  # reaps it
        self._scope.cancel()

    # ----------------------------------------------------- host requests --
    async def read(self, out_offset: int, err_offset: int, wait: float) -> tuple[bytes, bytes]:
        """What each stream holds past the host's offsets, once there is something
        new or ``wait`` seconds have passed."""
        self.out.acknowledge(out_offset, "out")
        self.err.acknowledge(err_offset, "err")
        self._notify()  # a pump waiting for room goes on
        self._idle.deadline = math.inf  # not idle while a read waits
        with trio.move_on_after(min(wait, MAX_WAIT)):
            while not (self.out.data or self.err.data or self.finished):
                await self._changed.wait()
        self._idle.deadline = trio.current_time() + self._idle_timeout
        return bytes(self.out.data), bytes(self.err.data)

    def reap(self) -> None:
        """The host was told of the exit: collect the exited program, freeing its
        pid, and end the background task."""
        self.process.poll()
        self._scope.cancel()

    async def write(self, data: bytes) -> int:
        """Write to stdin what it takes within ``WRITE_WAIT``; the count written."""
        async with self._writing:
            if self._stdin is None:
                raise GenericError("stdin is closed")
            fd = self._stdin.fileno()
            done = 0
            with trio.move_on_after(WRITE_WAIT):
                while done < len(data):
                    try:
                        done += os.write(fd, data[done:])
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(fd)
                    except OSError as error:  # EPIPE; EIO on a terminal nobody holds
                        raise GenericError(f"the program's stdin is closed ({error})") from error
            return done

    async def close_stdin(self) -> None:
        async with self._writing:
            if self.terminal is not None:
                eof = termios.tcgetattr(self.terminal.fileno())[6][termios.VEOF]
                with contextlib.suppress(OSError):
                    os.write(self.terminal.fileno(), eof)
                return
            if self._stdin is not None:
                await trio.aclose_forcefully(self._stdin)
                self._stdin = None

    def resize(self, rows: int, cols: int) -> None:
        if self.terminal is None:
            raise GenericError("the program does not run on a terminal")
        set_window_size(self.terminal.fileno(), rows, cols)

    def send_signal(self, number: int) -> None:
        """Signal the program's process group, as a terminal does. Until the exit
        is collected the program is not reaped, so its pid is still its own."""
        if number not in signal.valid_signals():
            raise GenericError(f"invalid signal {number}")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, number)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
