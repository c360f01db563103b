"""``boot_vm``: a throw-away VM with trio-qga inside, driven through its agent.

    async with boot_vm(VmConfig(cpus=2)) as vm:
        result = await vm.run(["uname", "-r"])
        await vm.put_file("build/module.ko", "/tmp/module.ko")

Entering boots QEMU and returns once the guest's agent answers, with a client
connected to it (``vm.client``). Leaving, in any way (the block ends, raises,
is cancelled, Ctrl-C), stops QEMU and waits for it, closes its sockets and
removes the VM's directory: nothing is left behind (see :mod:`.process` for
a launcher that is killed).
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import logging
import math
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import trio

from agent.host.errors import ClientError
from agent.host.execution import Chunk, RunResult
from agent.host.vm import warm
from agent.host.vm.cache import cache_dir, file_lock
from agent.host.vm.config import VmConfig
from agent.host.vm.console import Console, Step
from agent.host.vm.errors import BootFailed, VmError, VmTimeout
from agent.host.vm.groups import single_error
from agent.host.vm.guest_cache import with_guest_cache
from agent.host.vm.initramfs import BaseImage, base_image, write_initrd
from agent.host.vm.kernel import Kernel, current_kernel
from agent.host.vm.packages import ensure_packages, qemu_binary
from agent.host.vm.process import Child, running_child
from agent.host.vm.qemu import Wiring, choose_accel, command_line
from agent.host.vm.rundir import run_directory
from agent.host.vm.virtiofs import RootServer, root_fs, running_virtiofsd, with_root_fs

if TYPE_CHECKING:
    from agent.host.client import QgaClient

log = logging.getLogger(__name__)

AGENT_PACKAGE = Path(__file__).resolve().parents[2]  # agent/, which the guest runs
CONSOLE_DRAIN = 2.0  # seconds for the console's last bytes once QEMU is gone

Notice = Callable[[str], None]


class GuestCommandFailed(VmError):
    """``vm.run(..., check=True)``: the program's status was not 0."""

    def __init__(self, argv: Sequence[str], result: RunResult) -> None:
        stderr = result.stderr.decode(errors="replace").strip()[-2000:]
        super().__init__(f"{list(argv)} exited with status {result.shell_status}: {stderr}")
        self.result = result


@dataclass(frozen=True)
class BootTimings:
    """Seconds, from the host's clock and the guest's: QEMU's start to the kernel's,
    the kernel to the init, the init to the agent's start, the agent's start to its
    first answer, and QEMU's start to that answer."""

    qemu: float
    kernel: float
    init: float
    agent: float
    total: float

    def describe(self) -> str:
        return (
            f"boot: QEMU {self.qemu:.2f} s, kernel {self.kernel:.2f} s, init {self.init:.2f} s,"
            f" agent {self.agent:.2f} s; first answer {self.total:.2f} s after QEMU's start"
        )

    @classmethod
    def of(cls, started: float, steps: dict[str, Step], answered: float) -> BootTimings | None:
        init, agent = steps.get("init"), steps.get("agent")
        if init is None or agent is None:
            return None
        kernel_started = init.arrived - init.uptime
        return cls(
            qemu=kernel_started - started,
            kernel=init.uptime,
            init=agent.uptime - init.uptime,
            agent=answered - agent.arrived,
            total=answered - started,
        )


@dataclass(frozen=True)
class BootFiles:
    """What boots a guest, for those who start QEMU themselves (libvirt)."""

    kernel: Kernel
    initrd: Path
    accel: str


class Guest:
    """The guest, through one client of its agent: run programs, copy files."""

    def __init__(self, client: QgaClient) -> None:
        self.client = client

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        cwd: str | None = None,
        stdin: bytes | None = None,
        output: Callable[[Chunk], object] | None = None,
        check: bool = False,
    ) -> RunResult:
        """Run ``argv`` in the guest; ``output`` gets its stdout and stderr as they
        come (:func:`echo` prints them), the result has all of them and the status.
        ``check``: :class:`GuestCommandFailed` unless the status is 0."""
        execution = await self.client.run(argv, env=env, cwd=cwd, stdin=stdin)
        taken: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        async for chunk in execution:
            taken[chunk.stream].append(chunk.data)
            if output is not None:
                output(chunk)
        end = await execution
        result = RunResult(
            end.exitcode,
            end.signal,
            b"".join(taken["stdout"]) + end.stdout,
            b"".join(taken["stderr"]) + end.stderr,
        )
        if check and result.shell_status:
            raise GuestCommandFailed(argv, result)
        return result

    async def read_file(self, path: str) -> bytes:
        return await self.client.read_file(path)

    async def write_file(self, path: str, data: bytes) -> int:
        return await self.client.write_file(path, data)

    async def put_file(self, local: str | Path, path: str) -> int:
        """Copy a host file into the guest; the bytes copied."""
        return await self.client.put_file(str(local), path)

    async def get_file(self, path: str, local: str | Path) -> int:
        """Copy a guest file to the host; the bytes copied."""
        return await self.client.get_file(path, str(local))


class Vm(Guest):
    """A running VM; see :func:`boot_vm`."""

    def __init__(
        self,
        config: VmConfig,
        client: QgaClient,
        sockets: dict[str, Path],
        isa_socket: Path | None,
        console: Console,
        qemu: Child,
        accel: str,
        kernel: Kernel,
        timings: BootTimings | None,
    ) -> None:
        super().__init__(client)
        self.config = config
        self.sockets = sockets  # virtio-serial port name -> its host socket
        self.isa_socket = isa_socket
        self.console = console
        self.accel = accel
        self.kernel = kernel
        self.timings = timings
        self._qemu = qemu

    @property
    def qga_socket(self) -> Path:
        """The agent port's socket (one connection at a time: QEMU's)."""
        return self.sockets[self.config.agent_port]

    @property
    def running(self) -> bool:
        return self._qemu.returncode is None

    async def wait(self) -> int:
        """Until the VM stops by itself (the guest powered off); QEMU's exit status."""
        return await self._qemu.wait()


def echo(chunk: Chunk) -> None:
    """An ``output`` for :meth:`Vm.run`: the guest's output on ours, as it comes."""
    stream = sys.stdout if chunk.stream == "stdout" else sys.stderr
    stream.write(chunk.data.decode(errors="replace"))
    stream.flush()


async def prepare(config: VmConfig, notice: Notice) -> tuple[Kernel, BaseImage, str]:
    """(kernel, base initramfs, accelerator): installed, fetched or built if missing."""
    if config.agent is None:
        await trio.to_thread.run_sync(_compile_agent)
    if config.warm_files is not None:
        await trio.to_thread.run_sync(warm.refresh, config.python, config.warm_files)
    await ensure_packages(notice)
    cache = cache_dir()
    kernel = await current_kernel(cache, notice)
    base = await base_image(cache, kernel, config)
    accel = choose_accel(config)
    if accel == "tcg" and config.accel == "auto":
        notice("KVM is not usable here (no /dev/kvm for us, or no vmx/svm): emulating (TCG)")
    return kernel, base, accel


def _compile_agent() -> None:
    """The guest runs trio-qga from this very tree, read-only: bytecode it lacks
    would be compiled at every start there, slowly. Quick when up to date."""
    compileall.compile_dir(AGENT_PACKAGE, quiet=2)


async def boot_files(config: VmConfig, directory: Path, notice: Notice = log.info) -> BootFiles:
    """The kernel and an initrd for ``config`` in ``directory``: a guest booted from
    them by another QEMU (libvirt's) comes up as :func:`boot_vm`'s do, its 9p root
    tagged ``root`` (virtiofs only if ``root_fs`` says so) and its shares
    ``share0``, ``share1``..."""
    if config.root_fs == "auto":
        config = dataclasses.replace(config, root_fs="9p")
    kernel, base, accel = await prepare(config, notice)
    initrd = directory / "initrd.img"
    write_initrd(base, config, kernel, initrd)
    return BootFiles(kernel, initrd, accel)


@contextlib.asynccontextmanager
async def boot_vm(
    config: VmConfig | None = None,
    *,
    notice: Notice = log.info,
    on_step: Callable[[Step], object] | None = None,
    console_log: Path | None = None,
    console_echo: BinaryIO | None = None,
) -> AsyncIterator[Vm]:
    """Boot a VM of ``config`` and yield it once its agent answers; see the module.

    ``notice`` gets one-line notes (TCG, first-time installs); ``on_step`` each step
    of the guest's boot; ``console_log`` keeps the console after the VM is gone;
    ``console_echo`` gets it as it comes.
    Raises :class:`BootFailed` or :class:`VmTimeout` with the console's last lines."""
    config = with_root_fs(with_guest_cache(config or VmConfig(), cache_dir()))
    kernel, base, accel = await prepare(config, notice)
    with single_error():
        async with (
            file_lock(kernel.lock, shared=True),  # the kernel stays while we run
            _running(
                config, kernel, base, accel, Console(console_log, on_step, console_echo)
            ) as machine,
        ):
            client = await _first_answer(config, machine)
            try:
                vm = Vm(
                    config,
                    client,
                    machine.sockets.paths,
                    machine.run / "isa.sock" if config.isa_serial else None,
                    machine.console,
                    machine.qemu,
                    accel,
                    kernel,
                    BootTimings.of(machine.started, machine.console.steps, trio.current_time()),
                )
                with trio.fail_after(config.timeout or math.inf):
                    yield vm
            except trio.TooSlowError:
                raise VmTimeout(f"the VM ran longer than its {config.timeout} s: stopped") from None
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()


@dataclass(frozen=True)
class _Machine:
    """QEMU started, and what goes with it until it has stopped."""

    qemu: Child
    sockets: _Sockets
    console: Console
    run: Path  # the VM's own directory
    started: float  # trio.current_time() when QEMU was started


@contextlib.asynccontextmanager
async def _root_server(config: VmConfig, run: Path) -> AsyncIterator[RootServer | None]:
    """virtiofsd for a virtiofs root (stopped after the block); None for 9p (QEMU's)."""
    if root_fs(config) == "9p":
        yield None
        return
    async with running_virtiofsd(run) as server:
        yield server


async def _stop_with(daemon: Child, qemu: Child) -> None:
    """The guest's root is gone with virtiofsd: the VM with it (the boot then fails
    with virtiofsd's words, rather than hang until its timeout)."""
    await daemon.wait()
    await qemu.stop()


@contextlib.asynccontextmanager
async def _running(
    config: VmConfig, kernel: Kernel, base: BaseImage, accel: str, console: Console
) -> AsyncIterator[_Machine]:
    """QEMU (and virtiofsd) running with its console read; stopped, reaped and
    cleaned up after."""
    with run_directory() as run:
        async with _root_server(config, run) as server:
            with (
                _sockets(run, config, server) as sockets,
                contextlib.closing(console.open(run / "console.log")),
            ):
                initrd = run / "initrd.img"
                write_initrd(base, config, kernel, initrd)
                command = command_line(
                    config,
                    qemu=qemu_binary(),
                    accel=accel,
                    kernel=kernel.image,
                    initrd=initrd,
                    wiring=sockets.wiring,
                )
                started = trio.current_time()
                inherited = [each.fileno() for each in sockets.inherited]
                async with (
                    running_child(command, inherited=inherited, log=run / "qemu.log") as qemu,
                    trio.open_nursery() as nursery,
                ):
                    sockets.close_inherited()  # QEMU has them: the console ends with it
                    nursery.start_soon(console.pump, sockets.console_stream())
                    if server is not None:
                        nursery.start_soon(_stop_with, server.daemon, qemu)
                    try:
                        yield _Machine(qemu, sockets, console, run, started)
                    finally:
                        with trio.CancelScope(shield=True):
                            await qemu.stop()
                            if server is not None:
                                await server.daemon.stop()
                        # What QEMU wrote last may still be on its way.
                        nursery.cancel_scope.deadline = trio.current_time() + CONSOLE_DRAIN


@dataclass
class _Sockets:
    """The sockets of one VM: those QEMU inherits (listening ones for the agent
    ports, its end of the console's pair), the host's paths, our console end."""

    wiring: Wiring
    paths: dict[str, Path]  # virtio-serial port name -> socket path
    console: socket.socket
    inherited: list[socket.socket]

    def close_inherited(self) -> None:
        """Ours to close once QEMU has them (the console then ends with QEMU)."""
        for each in self.inherited:
            each.close()

    def console_stream(self) -> trio.SocketStream:
        return trio.SocketStream(trio.socket.from_stdlib_socket(self.console))


@contextlib.contextmanager
def _sockets(run: Path, config: VmConfig, server: RootServer | None) -> Iterator[_Sockets]:
    opened: list[socket.socket] = []

    def listening(path: Path) -> int:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        opened.append(server)
        server.bind(str(path))
        server.listen(1)
        return server.fileno()

    try:
        paths = {name: run / f"port{i}.sock" for i, name in enumerate(config.virtio_ports())}
        ports = {name: listening(path) for name, path in paths.items()}
        isa = listening(run / "isa.sock") if config.isa_serial else None
        ours, theirs = socket.socketpair()
        inherited = [*opened, theirs]
        opened += [ours, theirs]
        virtiofs = None
        if server is not None:  # QEMU's end of virtiofsd's socket, connected
            inherited.append(server.qemu_end)
            virtiofs = server.qemu_end.fileno()
        wiring = Wiring(theirs.fileno(), ports, isa, virtiofs)
        yield _Sockets(wiring, paths, ours, inherited)
    finally:
        for each in opened:
            each.close()


async def _first_answer(config: VmConfig, machine: _Machine) -> QgaClient:
    """A client in step with the guest's agent, once it answers.

    The client's module (with the schema's models: pydantic) is imported here,
    once QEMU is starting, not before: 0.08 s of the launcher's start that QEMU
    no longer waits for (docs/vm.md, "Where a boot's time goes")."""
    from agent.host.client import QgaClient, StreamChannel

    found: list[QgaClient] = []
    with trio.move_on_after(config.boot_timeout) as waited:
        async with trio.open_nursery() as race:

            async def answer() -> None:
                path = machine.sockets.paths[config.agent_port]
                stream = await trio.open_unix_socket(str(path))
                channel = StreamChannel(stream, config.boot_timeout)
                client = QgaClient(channel, request_timeout=config.request_timeout)
                try:
                    await client.resync()
                except ClientError:  # QEMU is gone: stopped() tells why
                    await trio.aclose_forcefully(stream)
                    return
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                channel.timeout = config.request_timeout
                found.append(client)
                race.cancel_scope.cancel()

            async def stopped() -> None:
                await machine.qemu.wait()
                race.cancel_scope.cancel()

            race.start_soon(answer)
            race.start_soon(stopped)
    if found:
        return found[0]
    if waited.cancelled_caught:
        raise VmTimeout(
            f"the guest's agent did not answer within {config.boot_timeout} s:"
            f" stopped.{_last_words(machine)}"
        )
    status = machine.qemu.returncode
    how = "the guest powered off" if status == 0 else f"QEMU failed ({status})"
    raise BootFailed(f"{how} before its agent answered.{_last_words(machine)}")


def _last_words(machine: _Machine) -> str:
    parts = []
    for name, log in (("QEMU", "qemu.log"), ("virtiofsd", "virtiofsd.log")):
        path = machine.run / log
        said = path.read_text(errors="replace").strip()[-2000:] if path.exists() else ""
        if said:
            parts.append(f"\n{name} said:\n{said}")
    parts.append(f"\nthe console's last lines:\n{machine.console.tail()}")
    return "".join(parts)
