"""A VM kept running in a thread of its own, for synchronous code and pytest fixtures.

    with BackgroundVm(VmConfig(cpus=2)) as vm:
        vm.run(["uname", "-a"])                     # prints the output as it comes
        async with vm.connect() as guest: ...        # from async code (pytest-trio)

The thread runs :func:`~agent.host.vm.machine.boot_vm` in a Trio loop of its
own and, once the agent has answered, lets go of the agent's port: every call
connects to it from the caller's thread (its own Trio loop, or a fresh one for
the synchronous calls), does its work and disconnects, so the VM can serve
tests in any thread or event loop, one connection at a time (QEMU's). Leaving
the block stops the VM.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from agent.host.client import QgaClient
from agent.host.execution import Chunk, RunResult
from agent.host.vm.config import VmConfig
from agent.host.vm.errors import VmError
from agent.host.vm.machine import BootTimings, Guest, Vm, boot_vm, echo

JOIN_TIMEOUT = 60.0  # seconds for the VM's thread to stop it and end


class BackgroundVm:
    """See the module. ``console_log`` keeps the guest's console (a file)."""

    def __init__(self, config: VmConfig | None = None, console_log: Path | None = None) -> None:
        self.config = config or VmConfig()
        self.console_log = console_log
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._vm: Vm | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._stopped = threading.Event()

    # ---------------------------------------------------------------- life --
    def start(self) -> BackgroundVm:
        """Boot, and return once the guest's agent answers (or raise why not)."""
        self._thread = threading.Thread(target=self._main, name="trio-qga-vm", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join(JOIN_TIMEOUT)
            self._thread = None
            error, self._error = self._error, None
            raise error
        return self

    def stop(self) -> None:
        """Stop the VM (if it still runs) and wait for its thread."""
        if self._thread is None:
            return
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            raise VmError(f"the VM's thread did not end within {JOIN_TIMEOUT} s")
        self._thread = None
        error, self._error = self._error, None
        if error is not None:  # the VM failed after it had booted
            raise error

    def __enter__(self) -> BackgroundVm:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as err:  # handed to start(), or kept for stop()
            self._error = err
        finally:
            self._stopped.set()
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with boot_vm(self.config, console_log=self.console_log) as vm:
            await vm.client.aclose()  # the port is for the callers' connections now
            self._vm, self._token = vm, trio.lowlevel.current_trio_token()
            self._ready.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when, vm.wait, nursery.cancel_scope)
                await self._stop.wait()
                nursery.cancel_scope.cancel()

    # ----------------------------------------------------------- the VM --
    @property
    def vm(self) -> Vm:
        if self._vm is None:
            raise VmError("the VM is not running (start() it)")
        return self._vm

    @property
    def qga_socket(self) -> Path:
        return self.vm.qga_socket

    @property
    def sockets(self) -> dict[str, Path]:
        return self.vm.sockets

    @property
    def isa_socket(self) -> Path:
        """The ISA serial port's socket (``VmConfig(isa_serial=True)``)."""
        if self.vm.isa_socket is None:
            raise VmError("this VM has no ISA serial port (isa_serial=True)")
        return self.vm.isa_socket

    @property
    def timings(self) -> BootTimings | None:
        return self.vm.timings

    @property
    def running(self) -> bool:
        return self._vm is not None and not self._stopped.is_set() and self._vm.running

    def console(self) -> str:
        """What the guest's console said so far."""
        return self.vm.console.text()

    def wait_stopped(self, timeout: float) -> bool:
        """Whether the VM stopped by itself (the guest powered off) within ``timeout``."""
        return self._stopped.wait(timeout)

    # ------------------------------------------------------------ calls --
    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Guest]:
        """The guest, through a connection made in the caller's Trio loop."""
        timeout = self.config.request_timeout
        client = await QgaClient.connect_unix(str(self.qga_socket), request_timeout=timeout)
        async with client:
            yield Guest(client)

    def call(self, work: Callable[[Guest], Any]) -> Any:
        """``await work(guest)`` in a Trio loop of its own (from synchronous code)."""

        async def connected() -> Any:
            async with self.connect() as guest:
                return await work(guest)

        return trio.run(connected)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        cwd: str | None = None,
        stdin: bytes | None = None,
        output: Callable[[Chunk], object] | None = echo,
        check: bool = True,
    ) -> RunResult:
        """:meth:`Guest.run` from synchronous code: by default the output goes to ours
        as it comes (a test's log) and a status other than 0 raises."""
        result: RunResult = self.call(
            lambda guest: guest.run(argv, env=env, cwd=cwd, stdin=stdin, output=output, check=check)
        )
        return result

    def read_file(self, path: str) -> bytes:
        data: bytes = self.call(lambda guest: guest.read_file(path))
        return data

    def write_file(self, path: str, data: bytes) -> int:
        count: int = self.call(lambda guest: guest.write_file(path, data))
        return count

    def put_file(self, local: str | Path, path: str) -> int:
        count: int = self.call(lambda guest: guest.put_file(local, path))
        return count

    def get_file(self, path: str, local: str | Path) -> int:
        count: int = self.call(lambda guest: guest.get_file(path, local))
        return count


async def _cancel_when(event: Callable[[], Any], scope: trio.CancelScope) -> None:
    await event()
    scope.cancel()
