"""``trio-qga-vm``: run a program in a throw-away VM of this machine, like ``vng -- cmd``.

    trio-qga-vm run -- make -C /src check          # its output, its exit status
    trio-qga-vm run --rw results -- pytest --junitxml=results/junit.xml
    trio-qga-vm run -t -- htop                     # on a terminal
    trio-qga-vm shell
    trio-qga-vm setup                              # install and cache, boot nothing

The VM boots with this machine's root (read-only, under a tmpfs overlay: the
guest's writes vanish), the program runs through the guest's agent in the
current directory, with live stdout, stderr and stdin, and the VM powers off
when it ends. Exit status: the program's (128 + N when signal N ended it),
124 when ``--timeout`` ran out, 125 when the VM failed, 130 or 143 when
interrupted (SIGINT, SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import trio

from agent.host.errors import ClientError
from agent.host.execution import NotSupported
from agent.host.vm.config import VmConfig
from agent.host.vm.console import Step
from agent.host.vm.errors import VmError, VmTimeout
from agent.host.vm.groups import single_error
from agent.host.vm.machine import boot_vm, prepare
from agent.host.vm.virtiofs import with_root_fs

TIMED_OUT = 124
VM_FAILED = 125
INTERRUPTED = 128 + signal.SIGINT
TERMINATED = 128 + signal.SIGTERM
PROGRAM = "trio-qga-vm"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Run a program in a throw-away VM of this machine."
    )
    vm = argparse.ArgumentParser(add_help=False)
    vm.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    vm.add_argument("--memory", type=int, default=1024, help="guest MiB (default 1024)")
    vm.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    vm.add_argument("--timeout", type=float, help="stop the VM after SECONDS (status 124)")
    vm.add_argument(
        "--boot-timeout", type=float, default=300.0, help="seconds to boot (default 300)"
    )
    vm.add_argument(
        "--rw",
        action="append",
        default=[],
        metavar="DIR",
        help="share host DIR read-write at the same path (repeatable)",
    )
    vm.add_argument(
        "--root-fs",
        choices=("auto", "9p", "virtiofs"),
        default="auto",
        help="the root's transport (default auto: the faster here; see docs/vm.md)",
    )
    vm.add_argument("--network", action="store_true", help="user-mode networking")
    vm.add_argument(
        "--isa-serial",
        action="store_true",
        help="an ISA serial port (the guest's /dev/ttyS1) on a host socket, its path on stderr",
    )
    vm.add_argument("--systemd", action="store_true", help="boot systemd as PID 1")
    vm.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="NAME",
        help="a kernel module the guest may load (repeatable)",
    )
    vm.add_argument("--hostname", default="trio-qga-vm")
    vm.add_argument("--console-log", type=Path, metavar="FILE", help="keep the console here")
    vm.add_argument("-v", "--verbose", action="store_true", help="the console on stderr")
    vm.add_argument("-q", "--quiet", action="store_true", help="no notes of our own")
    vm.add_argument(
        "--timings", action="store_true", help="how long the boot's steps took, on stderr"
    )
    program = argparse.ArgumentParser(add_help=False)
    program.add_argument("--env", action="append", default=[], metavar="K=V", help="(repeatable)")
    program.add_argument("--cwd", help="the program's directory (default: the current one)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[vm, program], help="run a program in a VM")
    run.add_argument("-t", action="store_true", help="on a terminal (interactive)")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS")
    commands.add_parser("shell", parents=[vm, program], help="a shell in a VM")
    setup = commands.add_parser("setup", help="install what VMs need and fill the cache")
    setup.add_argument("--module", action="append", default=[], metavar="NAME")
    return parser


def config_from(args: argparse.Namespace) -> VmConfig:
    return VmConfig(
        cpus=args.cpus,
        memory=args.memory,
        accel=args.accel,
        timeout=args.timeout,
        boot_timeout=args.boot_timeout,
        root_fs=args.root_fs,
        shares=tuple(Path(path).resolve() for path in args.rw),
        network=args.network,
        isa_serial=args.isa_serial,
        systemd=args.systemd,
        modules=tuple(args.module),
        hostname=args.hostname,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "setup":
        return trio.run(_setup, args)
    program = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.command == "shell":
        program = ["/bin/bash", "-l"]
    elif not program:
        parser.error("run: no program (trio-qga-vm run -- PROGRAM ARGS...)")
    for share in args.rw:
        if not Path(share).is_dir():
            parser.error(f"--rw {share}: not a directory")
    terminal = args.t if args.command == "run" else os.isatty(0)
    try:
        return trio.run(_run, args, program, terminal)
    except VmTimeout as err:
        _say(f"{err}")
        return TIMED_OUT
    except (VmError, ClientError, NotSupported) as err:
        _say(f"{err}")
        return VM_FAILED
    except KeyboardInterrupt:
        return INTERRUPTED


async def _setup(args: argparse.Namespace) -> int:
    config = with_root_fs(VmConfig(modules=tuple(args.module)))
    kernel, base, accel = await prepare(config, _say)
    _say(f"ready: kernel {kernel.version} ({kernel.image}), initramfs {base.initramfs}, {accel}")
    return 0


class _Progress:
    """The boot's steps on one line of a terminal, gone once the agent answers."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False

    def step(self, step: Step) -> None:
        self.stream.write(f"\r\x1b[K{PROGRAM}: booting: {step.name} ({step.uptime:.1f} s)")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


async def _run(args: argparse.Namespace, program: list[str], terminal: bool) -> int:
    config = config_from(args)
    notice = (lambda _: None) if args.quiet else _say
    progress = _Progress(sys.stderr) if sys.stderr.isatty() and not args.quiet else None
    status = TERMINATED
    with trio.CancelScope() as scope, single_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_terminate_on_signal, scope)
            async with boot_vm(
                config,
                notice=notice,
                on_step=progress.step if progress else None,
                console_log=args.console_log,
                console_echo=sys.stderr.buffer if args.verbose else None,
            ) as vm:
                if progress:
                    progress.clear()
                if vm.isa_socket is not None:
                    notice(f"ISA serial port (the guest's /dev/ttyS1) on {vm.isa_socket}")
                if args.timings and vm.timings is not None:
                    _say(vm.timings.describe())
                # Imported with the client once QEMU had started (boot_vm).
                from agent.host.run_command import run_command

                status = await run_command(
                    vm.client,
                    program,
                    terminal=terminal,
                    env=args.env,
                    cwd=args.cwd or os.getcwd(),
                )
            nursery.cancel_scope.cancel()
    return status


async def _terminate_on_signal(scope: trio.CancelScope) -> None:
    """SIGTERM or SIGHUP: stop the VM (cleanly, as on Ctrl-C) and exit 143."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as received:
        async for _ in received:
            scope.cancel()
            return


def _say(text: str) -> None:
    print(f"{PROGRAM}: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
