"""guest-exec and guest-exec-status: run a program in the guest, then collect it.

guest-exec starts the child and replies with its pid at once; the child is fed
and drained in the background (``agent.system.processes``). guest-exec-status
reports ``exited: false`` until the child has ended and closed its captured
output, then reports everything once and forgets the child, as qemu-ga does
(but a daemon the child left holding its output delays that by at most
``DRAIN_GRACE``, see ``agent.system.processes``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError
from agent.system.processes import Capture, ExecProcess, spawn
from agent.wire.b64 import decode_base64
from agent.wire.payload import Base64Payload

handlers = HandlerSet()

# capture-output mode -> (capture stdout, capture stderr, stderr into stdout)
CAPTURE_MODES = {
    "none": (False, False, False),
    "stdout": (True, False, False),
    "stderr": (False, True, False),
    "separated": (True, True, False),
    "merged": (True, False, True),
}


def capture_mode(capture_output: bool | str | None) -> str:
    """The schema's alternate: a bool (true is 'separated', as in qemu-ga) or a mode."""
    if capture_output is None or capture_output is False:
        return "none"
    if capture_output is True:
        return "separated"
    return str(getattr(capture_output, "value", capture_output))


def environment(env: Sequence[str] | None) -> dict[str, str] | None:
    """An ``env`` list (``NAME=VALUE``) as a mapping. guest-exec gives it to the
    child as its whole environment, as qemu-ga does (glib's spawn takes it as
    envp); the streaming exec adds it to the agent's (docs/exec.md)."""
    if env is None:
        return None
    result: dict[str, str] = {}
    for item in env:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise GenericError(f"invalid environment variable '{item}': it must be NAME=VALUE")
        result[name] = value
    return result


@handlers.command("guest-exec")
async def guest_exec(
    ctx: AgentContext,
    path: str,
    arg: list[str] | None,
    env: list[str] | None,
    input_data: str | None,
    capture_output: bool | str | None,
) -> dict[str, object]:
    data = None if input_data is None else decode_base64(input_data)
    out, err, merged = CAPTURE_MODES[capture_mode(capture_output)]
    environ = environment(env)
    ctx.processes.check_room()
    if not ctx.tasks.running:
        raise GenericError("the agent is not running: guest-exec cannot start a process")
    process = await spawn(
        [path, *(arg or ())],
        # qemu-ga gives a child without input-data /dev/null as its stdin.
        stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if out else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE if err else subprocess.DEVNULL,
        env=environ,
        process_group=0,  # its own group: killed whole when the agent stops
    )
    child = ExecProcess(process, Capture() if out else None, Capture() if err else None)
    ctx.processes.add(child)
    ctx.tasks.start_soon(child.supervise, data, name=f"guest-exec {child.pid}")
    return {"pid": child.pid}


@handlers.command("guest-exec-status")
def guest_exec_status(ctx: AgentContext, pid: int) -> dict[str, object]:
    child = ctx.processes.get(pid, ExecProcess)
    if not child.finished:
        return {"exited": False}
    ctx.processes.remove(pid)
    child.reap()
    status: dict[str, object] = {"exited": True}
    assert child.status is not None
    if child.status.exitcode is not None:
        status["exitcode"] = child.status.exitcode
    else:
        status["signal"] = child.status.signal
    # As qemu-ga: data only when there is some, with its truncation flag; in the
    # schema's order (both data, then both flags), as qemu-ga sends them.
    captured = [
        (key, capture)
        for key, capture in (("out", child.out), ("err", child.err))
        if capture is not None and capture.data
    ]
    for key, capture in captured:
        status[f"{key}-data"] = Base64Payload(capture.data)
    for key, capture in captured:
        status[f"{key}-truncated"] = capture.truncated
    return status
