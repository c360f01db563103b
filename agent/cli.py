"""The ``trio-qga`` command: qemu-ga's flags, plus ``--transport METHOD:PATH``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import sys
from collections.abc import Sequence

import trio

from agent.config import DEFAULT_PIDFILE, DEFAULT_STATEDIR, AgentConfig
from agent.fsfreeze.hook import DEFAULT_HOOK
from agent.fsfreeze.mounts import DEFAULT_MOUNT_TABLE
from agent.logholding import HoldingHandler
from agent.pidfile import PidfileError, held_pidfile
from agent.store import DEFAULT_MAX_HANDLES
from agent.version import VERSION

log = logging.getLogger("trio-qga")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-qga",
        description="QEMU guest agent on Trio; takes qemu-ga's options.",
    )
    parser.add_argument(
        "--transport",
        metavar="METHOD:PATH",
        help="transport and its path in one, e.g. unix-listen:/tmp/qga.sock",
    )
    parser.add_argument("-m", "--method", help="transport method (default virtio-serial)")
    parser.add_argument("-p", "--path", help="device or socket path")
    parser.add_argument("-l", "--logfile", help="append the log to LOGFILE (default stderr)")
    parser.add_argument(
        "-f", "--pidfile", default=DEFAULT_PIDFILE, help=f"pid file (default {DEFAULT_PIDFILE})"
    )
    parser.add_argument(
        "-t",
        "--statedir",
        default=DEFAULT_STATEDIR,
        help=f"state directory (default {DEFAULT_STATEDIR})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "-b", "--block-rpcs", metavar="LIST", help="comma-separated commands to disable"
    )
    parser.add_argument(
        "-a", "--allow-rpcs", metavar="LIST", help="comma-separated commands to enable (only)"
    )
    parser.add_argument(
        "--socket-mode",
        type=lambda text: int(text, 8),
        default=0o600,
        metavar="OCTAL",
        help="permissions of a unix-listen socket (default 0600)",
    )
    parser.add_argument(
        "--command-timeout", type=float, metavar="SECONDS", help="limit for any one command"
    )
    parser.add_argument(
        "--max-handles",
        type=int,
        default=DEFAULT_MAX_HANDLES,
        metavar="N",
        help=f"guest-file handles open at once (default {DEFAULT_MAX_HANDLES})",
    )
    parser.add_argument(
        "-F",
        "--fsfreeze-hook",
        nargs="?",
        const=DEFAULT_HOOK,
        metavar="PATH",
        help=f"run PATH with freeze/thaw around a freeze (default {DEFAULT_HOOK})",
    )
    parser.add_argument(
        "--thaw-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="thaw filesystems frozen for longer than this (default: never)",
    )
    parser.add_argument(
        "--mount-table",
        default=DEFAULT_MOUNT_TABLE,
        metavar="FILE",
        help=f"mountinfo file listing what a freeze covers (default {DEFAULT_MOUNT_TABLE})",
    )
    _add_system_commands(parser)
    return parser


def _seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return seconds


# Options naming the commands that power actions and guest-set-time run (shell-quoted).
SYSTEM_COMMANDS = {
    "poweroff_command": "of guest-shutdown (powerdown)",
    "halt_command": "of guest-shutdown mode=halt",
    "reboot_command": "of guest-shutdown mode=reboot",
    "suspend_disk_command": "of guest-suspend-disk",
    "suspend_ram_command": "of guest-suspend-ram",
    "suspend_hybrid_command": "of guest-suspend-hybrid",
    "hwclock_command": "of guest-set-time, run with -w or -s",
}


def _add_system_commands(parser: argparse.ArgumentParser) -> None:
    defaults = AgentConfig()
    for field, what in SYSTEM_COMMANDS.items():
        default = getattr(defaults, field)
        shown = shlex.join(default) if default else "systemctl, pm-utils or /sys/power"
        parser.add_argument(
            "--" + field.replace("_", "-"),
            type=_command,
            metavar="COMMAND",
            help=f"the command {what} (default: {shown})",
        )


def _command(text: str) -> tuple[str, ...]:
    argv = tuple(shlex.split(text))
    if not argv:
        raise argparse.ArgumentTypeError("the command is empty")
    return argv


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    method, path = args.method, args.path
    if args.transport:
        method, _, transport_path = args.transport.partition(":")
        path = transport_path or path
    return AgentConfig(
        method=method or "virtio-serial",
        path=path,
        logfile=args.logfile,
        pidfile=args.pidfile or None,
        statedir=args.statedir,
        verbose=args.verbose,
        socket_mode=args.socket_mode,
        blocked_rpcs=_split(args.block_rpcs) or (),
        allowed_rpcs=_split(args.allow_rpcs),
        command_timeout=args.command_timeout,
        max_handles=args.max_handles,
        fsfreeze_hook=args.fsfreeze_hook,
        thaw_timeout=args.thaw_timeout,
        mount_table=args.mount_table,
        **{
            field: getattr(args, field)
            for field in SYSTEM_COMMANDS
            if getattr(args, field) is not None
        },
    )


def _split(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(name for name in text.split(",") if name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"trio-qga {VERSION} (QEMU guest agent protocol)")
        return 0
    config = config_from_args(args)
    _setup_logging(config)
    try:
        with contextlib.ExitStack() as stack:
            if config.pidfile:
                stack.enter_context(held_pidfile(config.pidfile))
            trio.run(run, config)
    except PidfileError as err:
        log.error("%s", err)
        return 1
    except Exception as err:  # a transport that cannot open, a bad schema, ...
        for cause in _leaves(err):
            log.error("%s", cause)
            log.debug("details", exc_info=cause)
        return 1
    return 0


def _leaves(err: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, which nurseries raise."""
    if isinstance(err, BaseExceptionGroup):
        return [leaf for inner in err.exceptions for leaf in _leaves(inner)]
    return [err]


async def run(config: AgentConfig) -> None:
    """Serve ``config``'s transport until SIGTERM or SIGINT."""
    from agent.api import Agent  # after logging is set up: building it may log
    from agent.transports import serve_transport

    async with Agent(config) as agent, trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(serve_transport, config, agent.serve)
            log.info("trio-qga %s ready", VERSION)
            async for signum in signals:
                log.info("%s received, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _setup_logging(config: AgentConfig) -> None:
    handler: logging.Handler
    if config.logfile:
        handler = logging.FileHandler(config.logfile)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [HoldingHandler(handler)]  # held while filesystems are frozen
    root.setLevel(logging.DEBUG if config.verbose else logging.INFO)
