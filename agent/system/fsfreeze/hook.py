"""The fsfreeze hook (qemu-ga's ``-F``): a program run with ``freeze`` before the
freeze and with ``thaw`` after the thaw, to quiesce and resume applications.

As in qemu-ga, a hook that cannot be run or that exits non-zero fails the
command; unlike qemu-ga (which sends its output to /dev/null) the error
carries the end of what the hook printed, so the host sees why. Unlike
qemu-ga, a hook has a deadline (a hook stuck on a hung mount would hold the
freeze for ever): past it its process group is killed, and the agent does not
wait more than a second for it to go (the kernel may hold it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess

import trio

from agent.errors import GenericError, os_error_text

DEFAULT_HOOK = "/etc/qemu/fsfreeze-hook"
MAX_OUTPUT = 2000  # characters of the hook's output quoted in an error
HOOK_TIMEOUT = 60.0  # seconds a hook may run
KILL_WAIT = 1.0  # seconds to wait for a killed hook

log = logging.getLogger(__name__)


async def run_hook(hook: str, action: str, limit: float = HOOK_TIMEOUT) -> None:
    """Run ``hook action`` for at most ``limit`` seconds; raise GenericError if it
    cannot run, fails or does not finish in time."""
    log.info("executing fsfreeze hook with arg '%s'", action)
    try:
        process = await trio.lowlevel.open_process(
            [hook, action],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as err:
        raise GenericError(f"can't access fsfreeze hook '{hook}': {os_error_text(err)}") from err
    assert process.stdout is not None
    output = bytearray()
    try:
        with trio.move_on_after(limit) as scope:
            while chunk := await process.stdout.receive_some():
                output += chunk
                del output[: -4 * MAX_OUTPUT]
            await process.wait()
    finally:
        await trio.aclose_forcefully(process.stdout)
        if process.returncode is None:  # timed out, or cancelled
            await _kill(process)
    text = output.decode(errors="replace").strip()
    if len(text) > MAX_OUTPUT:
        text = "..." + text[-MAX_OUTPUT:]
    said = f": {text}" if text else ""
    if scope.cancelled_caught:
        raise GenericError(f"fsfreeze hook did not finish within {limit:g} s{said}")
    code = process.returncode
    assert code is not None  # waited for
    if code < 0:
        raise GenericError(f"fsfreeze hook has terminated abnormally (signal {-code}){said}")
    if code:
        raise GenericError(f"fsfreeze hook has failed with status {code}{said}")


async def _kill(process: trio.Process) -> None:
    """SIGKILL the hook's process group; wait a moment, not for ever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with trio.CancelScope(shield=True), trio.move_on_after(KILL_WAIT):
        await process.wait()
        return
    log.warning("fsfreeze hook %d killed but still stuck in the kernel", process.pid)
