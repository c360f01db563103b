"""From the command line and the configuration file to an :class:`AgentConfig`.

qemu-ga's flags plus ``--transport METHOD:PATH`` (repeatable), parsed by
:func:`build_parser`; :func:`configure` puts the configuration file's settings
first, the flags on top, and systemd's sockets last. Nothing here runs the
agent: that is ``agent/daemon/cli.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import socket
from collections.abc import Sequence

from agent.argtypes import COMMAND, COUNT, MODE, SECONDS
from agent.core.config import (
    DEFAULT_CACHE_DIR,
    DEFAULT_FS_TIMEOUT,
    DEFAULT_MAX_HANDLES,
    DEFAULT_PIDFILE,
    DEFAULT_STATEDIR,
    KERNEL_MOUNT_TABLE,
    AgentConfig,
)
from agent.daemon import conffile
from agent.system.fsfreeze.hook import DEFAULT_HOOK
from agent.transports.serve import check_transports
from agent.transports.spec import DEFAULT_BAUD_RATE, split_transport


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-qga",
        description="QEMU guest agent on Trio; takes qemu-ga's options.",
    )
    parser.add_argument(
        "--transport",
        action="append",
        default=[],
        metavar="METHOD:PATH",
        help="serve this transport too (repeatable), e.g. unix-listen:/tmp/qga.sock;"
        " -m/-p name one more",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"configuration file (default $QGA_CONF, else {conffile.DEFAULT_CONFIG_FILE})",
    )
    parser.add_argument(
        "-D", "--dump-conf", action="store_true", help="print the configuration and exit"
    )
    parser.add_argument("-d", "--daemonize", action="store_true", help="become a daemon")
    parser.add_argument(
        "-r",
        "--retry-path",
        action="store_true",
        help="reopen the channel every 5 s when it cannot be opened or fails",
    )
    parser.add_argument(
        "-m", "--method", help="transport method (default virtio-serial, if none is named)"
    )
    parser.add_argument("-p", "--path", help="device or socket path of -m's transport")
    parser.add_argument("-l", "--logfile", help="append the log to LOGFILE (default stderr)")
    parser.add_argument(
        "-f", "--pidfile", help=f"pid file (default {DEFAULT_PIDFILE} with -d, else none)"
    )
    parser.add_argument("-t", "--statedir", help=f"state directory (default {DEFAULT_STATEDIR})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "-b",
        "--block-rpcs",
        action="append",
        metavar="LIST",
        help="comma-separated commands to disable ('help' lists them)",
    )
    parser.add_argument(  # its name before QEMU 6.0, which RHEL 7 and 8 units still pass
        "--blacklist", action="append", dest="block_rpcs", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "-a",
        "--allow-rpcs",
        action="append",
        metavar="LIST",
        help="comma-separated commands to enable, no others ('help' lists them)",
    )
    parser.add_argument(
        "--socket-mode",
        type=MODE,
        metavar="OCTAL",
        help="permissions of a unix-listen socket (default 0600)",
    )
    parser.add_argument(
        "--baud-rate",
        type=COUNT,
        metavar="N",
        help=f"speed of an isa-serial line (default {DEFAULT_BAUD_RATE})",
    )
    parser.add_argument(
        "--command-timeout", type=SECONDS, metavar="SECONDS", help="limit for any one command"
    )
    parser.add_argument(
        "--max-handles",
        type=COUNT,
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
        type=SECONDS,
        metavar="SECONDS",
        help="thaw filesystems frozen for longer than this (default: never)",
    )
    parser.add_argument(
        "--exec-idle-timeout",
        type=SECONDS,
        metavar="SECONDS",
        help="kill a streaming-exec program whose output nobody read for this long (default 600)",
    )
    parser.add_argument(
        "--fs-timeout",
        type=SECONDS,
        metavar="SECONDS",
        help="give up on a filesystem call (open, read, statvfs, FIFREEZE, ...) after"
        f" this long and answer all the same (default {DEFAULT_FS_TIMEOUT:g})",
    )
    parser.add_argument(
        "--mount-table",
        metavar="FILE",
        help=f"mountinfo file listing what a freeze covers (default {KERNEL_MOUNT_TABLE})",
    )
    parser.add_argument(
        "--list-plugins", action="store_true", help="show the plugins found, and exit"
    )
    parser.add_argument(
        "--dump-schema",
        action="store_true",
        help="print the JSON Schemas of every command's arguments and return"
        " (plugins' included), and exit",
    )
    parser.add_argument("--no-plugins", action="store_true", help="load no plugin")
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help=f"keep the plugin record here ('' for none; default {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--disable-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="do not load this plugin (repeatable)",
    )
    _add_system_commands(parser)
    return parser


# Options naming the commands that power actions and guest-set-time run (shell-quoted).
SYSTEM_COMMANDS = {
    "poweroff_command": "of guest-shutdown (powerdown; /sbin/poweroff when present)",
    "halt_command": "of guest-shutdown mode=halt (/sbin/halt when present)",
    "reboot_command": "of guest-shutdown mode=reboot (/sbin/reboot when present)",
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
            type=COMMAND,
            metavar="COMMAND",
            help=f"the command {what} (default: {shown})",
        )


def config_from_args(args: argparse.Namespace, base: AgentConfig | None = None) -> AgentConfig:
    """``base`` (the config file's settings) with the flags of the command line on top.

    A flag that is not given leaves ``base`` alone; lists add up, as in qemu-ga.
    """
    base = base or AgentConfig.command_defaults()
    given = {
        "method": args.method,
        "path": args.path,
        "logfile": args.logfile,
        "statedir": args.statedir,
        "cache_dir": args.cache_dir,
        "socket_mode": args.socket_mode,
        "baud_rate": args.baud_rate,
        "command_timeout": args.command_timeout,
        "max_handles": args.max_handles,
        "fsfreeze_hook": args.fsfreeze_hook,
        "thaw_timeout": args.thaw_timeout,
        "exec_idle_timeout": args.exec_idle_timeout,
        "fs_timeout": args.fs_timeout,
        "mount_table": args.mount_table,
        **{field: getattr(args, field) for field in SYSTEM_COMMANDS},
    }
    changes = {name: value for name, value in given.items() if value is not None}
    if args.pidfile is not None:
        changes["pidfile"] = args.pidfile  # -f '': no pid file
    for flag in ("verbose", "daemonize", "retry_path"):
        if getattr(args, flag):
            changes[flag] = True
    if args.no_plugins:
        changes["plugins"] = False
    changes["disabled_plugins"] = base.disabled_plugins + tuple(args.disable_plugin)
    changes["transports"] = base.transports + tuple(args.transport)
    changes["blocked_rpcs"] = base.blocked_rpcs + _names(args.block_rpcs)
    if args.allow_rpcs is not None:
        changes["allowed_rpcs"] = (base.allowed_rpcs or ()) + _names(args.allow_rpcs)
    return dataclasses.replace(base, **changes)


def _names(lists: list[str] | None) -> tuple[str, ...]:
    """The command names of repeated ``-b``/``-a`` flags."""
    return tuple(name for text in lists or () for name in text.split(",") if name)


def wants_list(lists: list[str] | None) -> bool:
    return any(text in ("help", "?") for text in lists or ())


def configure(args: argparse.Namespace, listeners: Sequence[socket.socket] = ()) -> AgentConfig:
    """The configuration file's settings, then the flags, then systemd's sockets,
    which take the place of ``-m``/``-p``'s transport, as in qemu-ga (the
    ``--transport`` ones are served beside them)."""
    path, required = conffile.config_file(args.config)
    base = dataclasses.replace(AgentConfig.command_defaults(), **conffile.load(path, required))
    config = config_from_args(args, base)
    if listeners:
        config = dataclasses.replace(config, method=None, path=None)
        check_transports(config.named_transports)
    else:
        check_transports(config.transport_specs)
    return config


def absolute_paths(config: AgentConfig) -> AgentConfig:
    """The paths as the daemon sees them after ``chdir /``."""
    paths = {
        name: os.path.abspath(value)
        for name in ("logfile", "pidfile", "statedir", "cache_dir", "fsfreeze_hook", "mount_table")
        if (value := getattr(config, name))
    }
    if config.path and config.method != "vsock-listen":
        paths["path"] = os.path.abspath(config.path)
    transports = tuple(map(_absolute_transport, config.transports))
    return dataclasses.replace(config, **paths, transports=transports)


def _absolute_transport(text: str) -> str:
    method, path = split_transport(text)
    if path is None or method == "vsock-listen":
        return text
    return f"{method}:{os.path.abspath(path)}"
