"""The fsfreeze hook (qemu-ga's ``-F``): a program run with ``freeze`` before the
freeze and with ``thaw`` after the thaw, to quiesce and resume applications.

As in qemu-ga, a hook that cannot be run or that exits non-zero fails the
command; unlike qemu-ga (which sends its output to /dev/null) the error
carries the end of what the hook printed, so the host sees why.
"""

from __future__ import annotations

import logging
import subprocess

import trio

from agent.errors import GenericError, os_error_text

DEFAULT_HOOK = "/etc/qemu/fsfreeze-hook"
MAX_OUTPUT = 2000  # characters of the hook's output quoted in an error

log = logging.getLogger(__name__)


async def run_hook(hook: str, action: str) -> None:
    """Run ``hook action``; raise GenericError if it cannot run or fails."""
    log.info("executing fsfreeze hook with arg '%s'", action)
    try:
        result = await trio.run_process(
            [hook, action],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
            start_new_session=True,
        )
    except OSError as err:
        raise GenericError(f"can't access fsfreeze hook '{hook}': {os_error_text(err)}") from err
    output = result.stdout.decode(errors="replace").strip()
    if len(output) > MAX_OUTPUT:
        output = "..." + output[-MAX_OUTPUT:]
    said = f": {output}" if output else ""
    if result.returncode < 0:
        raise GenericError(
            f"fsfreeze hook has terminated abnormally (signal {-result.returncode}){said}"
        )
    if result.returncode:
        raise GenericError(f"fsfreeze hook has failed with status {result.returncode}{said}")
