"""The freezer: freeze and thaw guest filesystems, and never leave them frozen.

It drives the state machine of ``agent.system.fsfreeze.state``. A freeze begins
at once for every session of the agent (they run side by side: one freeze at
a time, and the commands not allowed while frozen are refused to all from
then on), reads what to freeze, lets the guest-file writes under way end
(``agent.system.fsfreeze.gate``), runs the hook, writes the frozen marker,
arms the watchdog process (started at the first freeze and kept), then
issues FIFREEZE children first; whatever stops
it part way (an error, a cancelled or timed-out command, an agent that is
shutting down) undoes it inside a shielded cancel scope: what was frozen is
thawed before the error reply goes out. A thaw happens on the
``guest-fsfreeze-thaw`` command, when the auto-thaw timeout expires, and when
the agent stops (:meth:`Freezer.aclose`).
While anything is frozen, log records are held in memory (``agent.system.fsfreeze.loghold``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

import trio

from agent.errors import GenericError, os_error_text
from agent.system.fsfreeze.gate import WriteGate
from agent.system.fsfreeze.hook import HOOK_TIMEOUT, run_hook
from agent.system.fsfreeze.ioctl import LinuxIoctls
from agent.system.fsfreeze.loghold import LogHold, NoHold
from agent.system.fsfreeze.marker import FrozenMarker
from agent.system.fsfreeze.state import FreezeEvent, FreezeMachine, FreezeState
from agent.system.fsfreeze.watchdog_client import Watchdog, WatchdogError
from agent.system.fsguard import FsGuard, FsTimeout

if TYPE_CHECKING:
    # Imported where the table is read: a start without a frozen marker does
    # not read it (docs/benchmarks.md, "The agent's start in a TCG guest").
    from agent.system.mounts import Mount

log = logging.getLogger(__name__)

# A thaw hook that runs while the agent cleans up (a failed freeze, shutdown,
# auto-thaw) may not keep it from finishing for longer than this.
CLEANUP_HOOK_TIMEOUT = 30.0


class AlreadyFrozen(Exception):
    """A freeze while another one is under way, or done: the command is disabled."""

    def __init__(self, state: FreezeState) -> None:
        super().__init__(f"fsfreeze: the filesystems are {state.value}")


class FreezeIoctls(Protocol):
    """The two kernel calls. Both block (FIFREEZE flushes the filesystem): call
    them in a worker thread."""

    def freeze(self, mountpoint: str, device: int | None) -> bool:
        """Freeze the filesystem at ``mountpoint``: True if frozen, False if the
        filesystem cannot be frozen (EOPNOTSUPP) or is frozen already (EBUSY).
        ``device`` (st_dev), when given, must be the filesystem found there.
        Raises OSError otherwise."""
        ...

    def thaw(self, mountpoint: str) -> bool:
        """Thaw the filesystem at ``mountpoint``: True if it was frozen."""
        ...


class Freezer:
    """The fsfreeze state of one agent, shared by all its sessions."""

    def __init__(
        self,
        statedir: str | None,
        *,
        mount_table: str,
        fs: FsGuard,
        hook: str | None = None,
        thaw_timeout: float | None = None,
        ioctls: FreezeIoctls | None = None,
        watchdog: bool = True,
        hook_timeout: float = HOOK_TIMEOUT,
        log_hold: LogHold | None = None,
    ) -> None:
        """``statedir`` holds the frozen marker; None keeps none, and an agent
        that restarts while frozen then starts thawed, not knowing (the watchdog
        still thaws when the agent dies). ``mount_table`` lists what a freeze
        may cover; ``fs`` gives each FIFREEZE and FITHAW its deadline;
        ``ioctls`` None means the real kernel calls; ``watchdog`` arms the
        watchdog process before each freeze (pointless with fake ioctls);
        ``log_hold`` is held while anything is frozen. Nothing is read
        here: the marker is, when :meth:`run` starts."""
        self._log_hold: LogHold = NoHold() if log_hold is None else log_hold
        self.mount_table = mount_table
        self.hook = hook
        self.hook_timeout = hook_timeout  # seconds the hook may run
        self.thaw_timeout = thaw_timeout
        self._ioctls: FreezeIoctls = ioctls or LinuxIoctls()
        self._use_watchdog = watchdog
        self._fs = fs
        self._marker = None if statedir is None else FrozenMarker(statedir)
        marker = None if self._marker is None else self._marker.path
        self._watchdog = Watchdog(marker=marker, hook=hook)
        self._lock = trio.Lock()  # one freeze or thaw at a time
        self.writes = WriteGate()  # guest-file writes under way, closed while frozen
        self._deadline = math.inf  # of the auto-thaw, in trio time
        self._deadline_changed = trio.Event()
        # What we froze, in freeze order; None: unknown (we started frozen from
        # a marker that does not say, as qemu-ga's), then a thaw covers all.
        self._frozen: list[str] | None = []
        self._machine = FreezeMachine()

    @property
    def state(self) -> FreezeState:
        return self._machine.state

    @property
    def frozen(self) -> bool:
        """True from the start of a freeze until the end of the thaw."""
        return self._machine.frozen

    async def freeze(self, mountpoints: Sequence[str] | None = None) -> int:
        """Freeze ``mountpoints`` (None: every freezable filesystem); the number frozen.

        The freeze begins before this first waits (:attr:`frozen` is then
        true for every session), unless a thaw is finishing. Raises
        :class:`AlreadyFrozen` when another freeze is under way or done.
        """
        try:
            self._lock.acquire_nowait()  # no pass through the scheduler before it begins
        except trio.WouldBlock:
            await self._lock.acquire()  # a thaw releasing the watchdog, or the start-up check
        try:
            if self._machine.state is not FreezeState.THAWED:
                raise AlreadyFrozen(self._machine.state)
            return await self._freeze(mountpoints)
        finally:
            self._lock.release()

    async def thaw(self, *, hook_timeout: float | None = None) -> int:
        """Thaw what we froze; the number of filesystems thawed (0 when none was frozen)."""
        async with self._lock:
            if self._machine.state is FreezeState.THAWED:
                return 0
            self._machine.fire(FreezeEvent.THAW)
            count = await self._thaw(self._frozen)
            await self._thaw_hook(self.hook_timeout if hook_timeout is None else hook_timeout)
            return count

    async def aclose(self) -> None:
        """Thaw if frozen, and stop the watchdog: the agent is stopping (SIGTERM,
        SIGINT, end of embedding)."""
        with trio.CancelScope(shield=True):
            if self.frozen:
                log.warning("stopping while frozen: thawing first")
                await self._thaw_logging_errors("stopping")
            await self._watchdog.aclose()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Thaw when the auto-thaw timeout expires; runs as long as the agent.

        First, a marker left by an earlier agent is checked against the filesystems.
        """
        if self._marker is not None and self._marker.exists():
            # As qemu-ga: a previous agent froze and did not thaw.
            # Frozen until _verify_marker has checked what it claims.
            async with self._lock:
                self._machine = FreezeMachine(FreezeState.FROZEN)
                self.writes.close()
                self._frozen = self._marker.mountpoints()
                self._log_hold.hold()
                log.warning("%s exists: checking what is frozen", self._marker.path)
                await self._verify_marker(self._marker)
        if self.frozen:
            self._arm_auto_thaw()
        task_status.started()
        while True:
            changed = self._deadline_changed
            with trio.move_on_at(self._deadline):
                await changed.wait()
                continue
            log.warning(
                "auto-thaw: filesystems frozen for %g s (--thaw-timeout): thawing",
                self.thaw_timeout,
            )
            await self._thaw_logging_errors("auto-thaw")

    async def _verify_marker(self, marker: FrozenMarker) -> None:
        """What an earlier agent's marker claims, checked by a thaw attempt per
        mountpoint it lists (all freezable ones when it does not say): FITHAW
        answers EINVAL when nothing is frozen. The agent starts thawed unless a
        mountpoint cannot be checked (an error or a hung mount); then it starts
        frozen with those, for guest-fsfreeze-thaw to try again."""
        listed = self._frozen if self._frozen is not None else await self._all_freezable()
        found, unknown = [], []
        for mountpoint in listed:
            try:
                was_frozen = await self._fs.call(mountpoint, partial(self._ioctls.thaw, mountpoint))
            except (FileNotFoundError, NotADirectoryError):
                found.append(f"{mountpoint}: gone")  # nothing mounted there can be frozen
            except (OSError, FsTimeout) as err:
                unknown.append(mountpoint)
                text = os_error_text(err) if isinstance(err, OSError) else str(err)
                found.append(f"{mountpoint}: cannot tell ({text})")
            else:
                found.append(
                    f"{mountpoint}: {'was frozen, thawed' if was_frozen else 'not frozen'}"
                )
        log.warning(
            "%s lists %d filesystem(s): %s",
            marker.path,
            len(listed),
            "; ".join(found) or "none",
        )
        if unknown:
            self._frozen = unknown
            log.warning("starting frozen: guest-fsfreeze-thaw tries %s again", ", ".join(unknown))
            return
        self._machine.fire(FreezeEvent.THAW)
        await self._thaw([])
        log.warning("starting thawed")

    # ---------------------------------------------------------------- freeze --

    async def _mount_table(self) -> list[Mount]:
        """The mount table, read by the runner (a configured one is a file anywhere);
        tried even with calls stuck elsewhere, as a thaw needs it."""
        from agent.system.mounts import read_mount_table

        read = partial(read_mount_table, self.mount_table)
        return await self._fs.call(None, read, fail_fast=False)

    async def _plan(self, mountpoints: Sequence[str] | None) -> list[Mount]:
        from agent.system.mounts import MountTableError, freeze_plan, unfreezable

        try:
            table = await self._mount_table()
        except (MountTableError, FsTimeout) as err:
            raise GenericError(str(err)) from err
        for path, reason in unfreezable(table, mountpoints or ()).items():
            log.info("guest-fsfreeze-freeze-list: ignoring '%s': %s", path, reason)
        return freeze_plan(table, mountpoints)

    async def _freeze(self, mountpoints: Sequence[str] | None) -> int:
        self._machine.fire(FreezeEvent.FREEZE)  # every session is held to the frozen state
        self.writes.close()
        self._log_hold.hold()  # from here on, nothing of ours may write to a filesystem
        log.info("guest-fsfreeze called")
        frozen: list[str] = []
        hook_ran = done = False
        try:
            plan = await self._plan(mountpoints)
            if not plan:
                log.info("nothing to freeze")
                return 0
            await self._drain_writes()
            if self.hook:
                await run_hook(self.hook, "freeze", self.hook_timeout)
                hook_ran = True
            self._write_marker([mount.mountpoint for mount in plan])
            if self._use_watchdog:
                await self._arm_watchdog(plan)
            for mount in plan:
                if await self._freeze_guarded(mount):
                    frozen.append(mount.mountpoint)
            done = bool(frozen)
        finally:
            if not done:  # failed, cancelled, or nothing could be frozen
                self._machine.fire(FreezeEvent.UNDO)
                await self._thaw(frozen)
                if hook_ran:
                    await self._cleanup_hook()
        if not done:
            return 0
        self._frozen = frozen
        self._machine.fire(FreezeEvent.FROZEN)
        self._arm_auto_thaw()
        log.info("froze %d filesystem(s): %s", len(frozen), ", ".join(frozen))
        return len(frozen)

    async def _drain_writes(self) -> None:
        """Let the guest-file writes under way end before the first FIFREEZE
        (``agent.system.fsfreeze.gate``); those that do not, within the
        filesystem deadline, fail the freeze."""
        with trio.move_on_after(self._fs.timeout):
            await self.writes.drained()
        if self.writes.inside:
            raise GenericError(
                f"fsfreeze: {self.writes.inside} guest-file write(s) still under way after"
                f" {self._fs.timeout:g} s; nothing was frozen"
            )

    async def _freeze_guarded(self, mount: Mount) -> bool:
        """FIFREEZE under the deadline; one that ends after it is undone then."""
        try:
            return await self._fs.call(
                mount.mountpoint,
                partial(self._freeze_one, mount),
                discard=partial(self._undo_late_freeze, mount.mountpoint),
            )
        except FsTimeout as err:
            raise GenericError(f"failed to freeze {mount.mountpoint}: {err}") from err

    def _undo_late_freeze(self, mountpoint: str, frozen: bool) -> None:
        """In the abandoned thread, once its FIFREEZE came back after all."""
        if frozen:
            thawed = self._thaw_one(mountpoint)
            log.warning("%s froze after its freeze was given up: thawed %s", mountpoint, thawed)

    def _freeze_one(self, mount: Mount) -> bool:
        """In a worker thread: FIFREEZE one filesystem."""
        # btrfs shows an anonymous device in the mount table, and each of its
        # subvolumes its own in stat(): there is nothing to compare.
        device = None if mount.fstype == "btrfs" else mount.device
        try:
            frozen = self._ioctls.freeze(mount.mountpoint, device)
        except OSError as err:
            raise GenericError(
                f"failed to freeze {mount.mountpoint}: {os_error_text(err)}"
            ) from err
        if not frozen:
            log.info("%s cannot be frozen or is frozen already: skipped", mount.mountpoint)
        return frozen

    def _write_marker(self, mountpoints: list[str]) -> None:
        if self._marker is None:
            return
        try:
            self._marker.write(mountpoints)
        except OSError as err:  # as qemu-ga: a warning, the freeze goes on
            log.warning("cannot create %s: %s", self._marker.path, os_error_text(err))

    async def _arm_watchdog(self, plan: list[Mount]) -> None:
        try:
            await self._watchdog.arm([mount.mountpoint for mount in plan])
        except WatchdogError as err:
            raise GenericError(str(err)) from err

    # ------------------------------------------------------------------ thaw --

    async def _thaw(self, mountpoints: list[str] | None) -> int:
        """THAWING -> THAWED: FITHAW, the marker, the held logs, then the watchdog.

        Shielded: once started, a thaw always finishes.
        """
        with trio.CancelScope(shield=True):
            self._set_deadline(math.inf)  # a thaw under way disarms the auto-thaw
            if mountpoints is None:
                mountpoints = await self._all_freezable()
            count = 0
            for mountpoint in reversed(mountpoints):  # parents first
                try:
                    count += await self._fs.call(mountpoint, partial(self._thaw_one, mountpoint))
                except FsTimeout as err:
                    log.error("cannot thaw %s: %s", mountpoint, err)
            if self._marker is not None:
                try:
                    self._marker.remove()
                except OSError as err:
                    log.warning("cannot remove %s: %s", self._marker.path, os_error_text(err))
            self._frozen = []
            self._machine.fire(FreezeEvent.THAWED)
            self.writes.open()
            self._log_hold.resume()
            log.info("thawed %d filesystem(s)", count)
            await self._watchdog.release()  # still under the lock: no freeze meanwhile
        return count

    def _thaw_one(self, mountpoint: str) -> bool:
        try:
            return self._ioctls.thaw(mountpoint)
        except OSError as err:
            log.error("cannot thaw %s: %s", mountpoint, os_error_text(err))
            return False

    async def _all_freezable(self) -> list[str]:
        """Every freezable mountpoint, for a thaw that does not know what was frozen."""
        from agent.system.mounts import MountTableError, freeze_plan

        try:
            table = await self._mount_table()
        except (MountTableError, FsTimeout) as err:
            log.error("cannot thaw: %s", err)
            return []
        return [mount.mountpoint for mount in freeze_plan(table, None)]

    async def _thaw_hook(self, limit: float) -> None:
        if not self.hook:
            return
        await run_hook(self.hook, "thaw", limit)

    async def _cleanup_hook(self) -> None:
        """The thaw hook after an undone freeze: the freeze's error is the one to report."""
        with trio.CancelScope(shield=True):
            try:
                await self._thaw_hook(min(self.hook_timeout, CLEANUP_HOOK_TIMEOUT))
            except GenericError as err:
                log.error("%s", err.desc)

    async def _thaw_logging_errors(self, why: str) -> None:
        try:
            count = await self.thaw(hook_timeout=min(self.hook_timeout, CLEANUP_HOOK_TIMEOUT))
        except GenericError as err:  # the thaw hook failed; the filesystems are thawed
            log.error("%s: %s", why, err.desc)
        else:
            log.warning("%s: thawed %d filesystem(s)", why, count)

    # ------------------------------------------------------------- auto-thaw --

    def _arm_auto_thaw(self) -> None:
        if self.thaw_timeout is not None:
            self._set_deadline(trio.current_time() + self.thaw_timeout)

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        self._deadline_changed.set()
        self._deadline_changed = trio.Event()
