"""The agent's side of the fsfreeze watchdog (see ``watchdog.py``): start it, arm it
with the mountpoints about to be frozen, release it after the thaw."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import trio

from agent.fsfreeze.watchdog import ARMED, RELEASED

WATCHDOG_PROGRAM = str(Path(__file__).with_name("watchdog.py"))
START_TIMEOUT = 10.0  # seconds for the watchdog to start and answer
STOP_TIMEOUT = 5.0  # seconds for it to exit once released, before it is killed

log = logging.getLogger(__name__)


class WatchdogError(Exception):
    """The watchdog could not be started: the freeze must not go ahead."""


class Watchdog:
    """A running, armed watchdog process."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, mountpoints: list[str], *, marker: str, hook: str | None) -> Watchdog:
        """Start the watchdog and wait until it holds ``mountpoints``."""
        # -I -S: the standard library only; nothing from the environment.
        command = [sys.executable, "-I", "-S", WATCHDOG_PROGRAM, "--marker", marker]
        if hook:
            command += ["--hook", hook]
        try:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
            )
        except OSError as err:
            raise WatchdogError(f"cannot start the fsfreeze watchdog: {err}") from err
        watchdog = cls(process)
        try:
            with trio.fail_after(START_TIMEOUT):
                await watchdog._arm(mountpoints)
        except (trio.TooSlowError, trio.BrokenResourceError, OSError) as err:
            await watchdog._kill()
            raise WatchdogError(f"the fsfreeze watchdog did not start: {err!r}") from err
        except BaseException:
            await watchdog._kill()
            raise
        log.debug("fsfreeze watchdog %d armed for %s", process.pid, ", ".join(mountpoints))
        return watchdog

    async def _arm(self, mountpoints: list[str]) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        await self.process.stdin.send_all(json.dumps(mountpoints).encode() + b"\n")
        answer = b""
        while len(answer) < len(ARMED):
            data = await self.process.stdout.receive_some(len(ARMED) - len(answer))
            if not data:
                break
            answer += data
        if answer != ARMED:
            raise trio.BrokenResourceError(f"it answered {answer!r}")
        await self.process.stdout.aclose()

    async def release(self) -> None:
        """Tell the watchdog that all is thawed, and wait for it to exit. Shielded:
        this runs on the way out of a cancelled freeze or of the agent."""
        with trio.CancelScope(shield=True):
            assert self.process.stdin is not None
            try:
                await self.process.stdin.send_all(RELEASED)
                await self.process.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
                log.warning("fsfreeze watchdog %d: %s", self.process.pid, err)
            with trio.move_on_after(STOP_TIMEOUT):
                await self.process.wait()
                return
            log.warning("fsfreeze watchdog %d did not exit: killing it", self.process.pid)
            await self._kill()

    async def _kill(self) -> None:
        with trio.CancelScope(shield=True):
            self.process.kill()
            await self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe is not None:
                    await trio.aclose_forcefully(pipe)
