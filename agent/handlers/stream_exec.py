"""The streaming exec extension: start a program, read its output while it runs,
write its stdin, resize its terminal, signal it (``agent.system.streaming``).

The names carry QAPI's downstream prefix (see the schema), so that no future
QEMU command can take them. guest-exec and guest-exec-status are untouched.
"""

from __future__ import annotations

import os
import subprocess

import trio

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError, os_error_text
from agent.handlers.exec import environment
from agent.models.struct import Struct
from agent.system.processes import spawn
from agent.system.streaming import StreamProcess, set_window_size, take_terminal
from agent.wire.b64 import decode_base64
from agent.wire.payload import Base64Payload

PREFIX = "__io.github.trio-qga_"
DEFAULT_ROWS, DEFAULT_COLS = 24, 80
DEFAULT_WAIT = 1.0

handlers = HandlerSet()


@handlers.command(PREFIX + "exec-start")
async def exec_start(
    ctx: AgentContext,
    path: str,
    arg: list[str] | None,
    env: list[str] | None,
    cwd: str | None,
    terminal: Struct | None,
) -> dict[str, object]:
    # Added to the agent's environment, where guest-exec's replaces it (qemu-ga's
    # contract): a program that is run as from a shell, as `ssh host cmd` runs
    # it, needs PATH, HOME and the rest; the host cannot know the guest's values.
    added = environment(env)
    environ = None if added is None else {**os.environ, **added}
    ctx.processes.check_room()
    if not ctx.tasks.running:
        raise GenericError("the agent is not running: a program cannot start")
    argv = [path, *(arg or ())]
    if terminal is None:
        process = await spawn(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
            cwd=cwd,
            process_group=0,  # its own group: signalled and killed whole
        )
        child = StreamProcess(process)
    else:
        rows, cols = getattr(terminal, "rows", None), getattr(terminal, "cols", None)
        size = (DEFAULT_ROWS if rows is None else rows, DEFAULT_COLS if cols is None else cols)
        child = await _start_on_terminal(argv, environ, cwd, size)
    ctx.processes.add(child)
    timeout = ctx.config.exec_idle_timeout
    ctx.tasks.start_soon(child.supervise, timeout, ctx.processes.remove, name=f"exec {child.pid}")
    return {"pid": child.pid}


async def _start_on_terminal(
    argv: list[str], environ: dict[str, str] | None, cwd: str | None, size: tuple[int, int]
) -> StreamProcess:
    """Start ``argv`` in a new session whose controlling terminal is a new pty."""
    try:
        master, slave = os.openpty()
    except OSError as error:
        raise GenericError(f"cannot open a pseudo-terminal: {os_error_text(error)}") from error
    try:
        set_window_size(master, *size)
        process = await spawn(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={"TERM": "xterm", **(environ or os.environ)},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=take_terminal,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the child has it: its last holder's exit ends the output
    return StreamProcess(process, terminal=trio.lowlevel.FdStream(master))


@handlers.command(PREFIX + "exec-read")
async def exec_read(
    ctx: AgentContext,
    pid: int,
    out_offset: int | None,
    err_offset: int | None,
    wait: float | None,
) -> dict[str, object]:
    wait = DEFAULT_WAIT if wait is None else wait
    if not wait >= 0:
        raise GenericError(f"invalid wait {wait:g}: it must be 0 or more seconds")
    child = ctx.processes.get(pid, StreamProcess)
    out, err = await child.read(out_offset or 0, err_offset or 0, wait)
    reply: dict[str, object] = {
        "out-data": Base64Payload(out),
        "err-data": Base64Payload(err),
        "exited": child.finished,
    }
    if child.finished:
        ctx.processes.remove(pid)
        child.reap()
        assert child.status is not None
        if child.status.exitcode is not None:
            reply["exitcode"] = child.status.exitcode
        else:
            reply["signal"] = child.status.signal
    return reply


@handlers.command(PREFIX + "exec-write")
async def exec_write(ctx: AgentContext, pid: int, data: str) -> dict[str, object]:
    payload = decode_base64(data)
    return {"count": await ctx.processes.get(pid, StreamProcess).write(payload)}


@handlers.command(PREFIX + "exec-close-stdin")
async def exec_close_stdin(ctx: AgentContext, pid: int) -> dict[str, object]:
    await ctx.processes.get(pid, StreamProcess).close_stdin()
    return {}


@handlers.command(PREFIX + "exec-resize")
def exec_resize(ctx: AgentContext, pid: int, rows: int, cols: int) -> dict[str, object]:
    ctx.processes.get(pid, StreamProcess).resize(rows, cols)
    return {}


@handlers.command(PREFIX + "exec-signal")
def exec_signal(ctx: AgentContext, pid: int, signal: int) -> dict[str, object]:
    ctx.processes.get(pid, StreamProcess).send_signal(signal)
    return {}
