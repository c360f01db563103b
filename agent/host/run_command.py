"""``trio-qga-client run [-t] [--env K=V] [--cwd DIR] -- PROGRAM ARGS...``, like ``ssh host cmd``.

The program's stdout and stderr come out on ours as they come, our stdin goes
to it, Ctrl-C is forwarded to it as SIGINT, and we exit with its status
(128 + N when signal N ended it). With ``-t`` it runs on a pseudo-terminal:
our terminal goes raw (Ctrl-C is then a byte for the guest's terminal to
turn into SIGINT) and window size changes follow. Against an agent without
the streaming extension (qemu-ga) the output comes when the program has
ended, and our stdin (when it is not a terminal) is read whole first; an agent
whose command filter disables exec is an error before anything is read. Leaving
before the program ends (the third Ctrl-C, our stdout closed) sends it SIGHUP,
as the end of an ssh session does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import termios
import tty
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import trio

from agent.host.client import QgaClient
from agent.host.errors import ClientError
from agent.host.execution import (
    BUSY_WAIT,
    READ_WAIT,
    START,
    Execution,
    NotSupported,
    StreamingExecution,
    start_polled,
    start_streaming,
)

STDIN_READ = 64 * 1024
GIVE_UP_AFTER = 3  # Ctrl-C: the third one leaves without waiting for the program
# Seconds for the SIGHUP of a program we leave: the client first resynchronises,
# behind the long poll we cancelled.
HANG_UP_WAIT = READ_WAIT + 10


async def run_command(
    client: QgaClient,
    argv: Sequence[str],
    *,
    terminal: bool = False,
    env: Sequence[str] = (),
    cwd: str | None = None,
) -> int:
    """Run ``argv`` in the guest with our standard streams; its shell status.
    An agent whose filter disables exec: :class:`ExecDisabled`, before our stdin is read."""
    size = None
    if terminal:
        size = _window_size()
        if "TERM" in os.environ and not any(item.startswith("TERM=") for item in env):
            env = [f"TERM={os.environ['TERM']}", *env]  # as ssh passes it
    execution: Execution | None
    execution = await start_streaming(client, argv, env=env, cwd=cwd, terminal=size)
    if execution is None:
        if terminal:
            raise NotSupported("a terminal needs the streaming exec extension of trio-qga")
        commands = await client.commands()
        why = "its streaming exec disabled" if START in commands else "no streaming exec (qemu-ga?)"
        print(
            f"trio-qga-client: the agent has {why}: using guest-exec,"
            " the output will come when the program has ended",
            file=sys.stderr,
        )
        stdin = None
        if not os.isatty(0):
            stdin = await trio.to_thread.run_sync(sys.stdin.buffer.read)
        execution = await start_polled(client, argv, env=env, cwd=cwd, stdin=stdin)
    with _raw_mode(terminal and os.isatty(0)), trio.CancelScope() as give_up:
        try:
            async with trio.open_nursery() as nursery:
                if isinstance(execution, StreamingExecution):
                    nursery.start_soon(_forward_stdin, execution)
                    nursery.start_soon(_forward_signals, execution, terminal, give_up)
                await _print_output(execution, sys.stdout.buffer, sys.stderr.buffer)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            error = _first(group)
            if isinstance(error, OSError):  # ours (stdout closed): the agent is fine
                await _hang_up(execution)
            raise error from None  # the CLI reports a lost agent, not a group
    if give_up.cancelled_caught:
        await _hang_up(execution)
        return 128 + signal.SIGINT
    return (await execution).shell_status


async def _hang_up(execution: Execution) -> None:
    """Leaving before the program ends: SIGHUP it, as sshd's end of a session does."""
    with trio.move_on_after(HANG_UP_WAIT), contextlib.suppress(ClientError, NotSupported):
        await execution.send_signal(signal.SIGHUP)


async def _print_output(execution: Execution, stdout: BinaryIO, stderr: BinaryIO) -> None:
    async for chunk in execution:
        out = stdout if chunk.stream == "stdout" else stderr
        out.write(chunk.data)
        out.flush()


async def _forward_stdin(execution: StreamingExecution) -> None:
    """Our stdin to the program's, piece by piece, then close it. Reads run in a
    thread (a non-blocking stdin would be non-blocking for the shell too)."""
    execution.wait_seconds = BUSY_WAIT  # a read would hold up what we type
    while data := await trio.to_thread.run_sync(os.read, 0, STDIN_READ, abandon_on_cancel=True):
        await execution.write(data)
    execution.wait_seconds = READ_WAIT
    await execution.close_stdin()


async def _forward_signals(
    execution: StreamingExecution, terminal: bool, give_up: trio.CancelScope
) -> None:
    interrupts = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGWINCH) as received:
        async for number in received:
            if number == signal.SIGWINCH and terminal:
                await execution.resize(*_window_size())
            elif number == signal.SIGINT:
                interrupts += 1
                if interrupts >= GIVE_UP_AFTER:
                    give_up.cancel()
                    return
                await execution.send_signal(signal.SIGINT)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a group (the others, if any, follow from it: the same
    broken connection seen by the output and the stdin tasks)."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _window_size() -> tuple[int, int]:
    """(rows, cols) of our terminal; without one, $LINES/$COLUMNS or 24x80."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            columns, lines = os.get_terminal_size(fd)
            return lines, columns
    columns, lines = shutil.get_terminal_size()
    return lines, columns


@contextlib.contextmanager
def _raw_mode(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
