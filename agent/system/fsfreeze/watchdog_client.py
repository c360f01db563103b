"""The agent's side of the fsfreeze watchdog (see ``watchdog.py``): start it once,
arm it with the mountpoints about to be frozen, release it after each thaw, and
stop it with the agent."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import trio

from agent.system.fsfreeze.watchdog import ARMED, RELEASED

WATCHDOG_PROGRAM = str(Path(__file__).with_name("watchdog.py"))
ARM_TIMEOUT = 10.0  # seconds for the watchdog to start (the first time) and answer
STOP_TIMEOUT = 5.0  # seconds for it to exit once its input is closed, before it is killed

log = logging.getLogger(__name__)


class WatchdogError(Exception):
    """The watchdog could not be armed: the freeze must not go ahead."""


class Watchdog:
    """The watchdog process, started before the first freeze and kept for the next ones."""

    def __init__(self, *, marker: Path | None, hook: str | None) -> None:
        """``marker``: the frozen marker the watchdog removes after its thaw, if any."""
        # -I -S: the standard library only; nothing from the environment.
        self._command = [sys.executable, "-I", "-S", WATCHDOG_PROGRAM]
        if marker is not None:
            self._command += ["--marker", str(marker)]
        if hook:
            self._command += ["--hook", hook]
        self._process: trio.Process | None = None
        self._armed = False

    async def arm(self, mountpoints: list[str]) -> None:
        """Make the watchdog hold ``mountpoints`` (starting it if it is not running)."""
        if self._process is not None and self._process.poll() is not None:
            log.warning("fsfreeze watchdog %d has gone: starting another", self._process.pid)
            await self._stop()
        try:
            with trio.fail_after(ARM_TIMEOUT):
                if self._process is None:
                    self._process = await trio.lowlevel.open_process(
                        self._command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        start_new_session=True,
                    )
                await self._arm(self._process, mountpoints)
        except (trio.TooSlowError, trio.BrokenResourceError, OSError) as err:
            await self._stop()
            raise WatchdogError(f"the fsfreeze watchdog did not start: {err!r}") from err
        except BaseException:
            await self._stop()
            raise
        self._armed = True
        log.debug("fsfreeze watchdog %d armed for %s", self._process.pid, ", ".join(mountpoints))

    @staticmethod
    async def _arm(process: trio.Process, mountpoints: list[str]) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send_all(json.dumps(mountpoints).encode() + b"\n")
        answer = b""
        while len(answer) < len(ARMED):
            data = await process.stdout.receive_some(len(ARMED) - len(answer))
            if not data:
                break
            answer += data
        if answer != ARMED:
            raise trio.BrokenResourceError(f"it answered {answer!r}")

    async def release(self) -> None:
        """Tell the watchdog that all is thawed; it then waits for the next freeze.
        Shielded: this runs on the way out of a cancelled freeze or of the agent."""
        if not self._armed:
            return
        self._armed = False
        assert self._process is not None
        assert self._process.stdin is not None
        with trio.CancelScope(shield=True):
            try:
                await self._process.stdin.send_all(RELEASED)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
                log.warning("fsfreeze watchdog %d: %s", self._process.pid, err)
                await self._stop()

    async def aclose(self) -> None:
        """Stop the watchdog (released first, if armed): the agent is stopping."""
        await self.release()
        if self._process is None:
            return
        with trio.CancelScope(shield=True):
            assert self._process.stdin is not None
            await trio.aclose_forcefully(self._process.stdin)
            with trio.move_on_after(STOP_TIMEOUT):
                await self._process.wait()
                await self._stop()
                return
            log.warning("fsfreeze watchdog %d did not exit: killing it", self._process.pid)
            await self._stop()

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    await trio.aclose_forcefully(pipe)
