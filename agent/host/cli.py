"""``trio-qga-client``: drive a guest agent from the host (the modern ``qemu-ga-client``).

trio-qga-client --address /tmp/qga.sock ping
trio-qga-client --address /tmp/qga.sock get /var/log/syslog ./syslog
trio-qga-client --address /tmp/qga.sock run -- make -C /src check
trio-qga-client --address /tmp/qga.sock run -t -- /bin/bash
trio-qga-client --connect qemu:///system --domain web1 exec /bin/uname -a
trio-qga-client --connect qemu:///system --domain 'web*' info --json
trio-qga-client -c qemu:///system -d 'db*' fsfreeze freeze-thaw --run 'lvcreate -s ...' /srv
trio-qga-client -c a=qemu+ssh://hv-a/system -c b=qemu+ssh://hv-b/system -d 'db*' info
trio-qga-client --inventory fleet.txt -d 'b:web*' exec /bin/uptime

With ``--address`` the client speaks to the agent's socket; with ``--connect URI
--domain NAME`` it goes through libvirt, which owns the channel. ``--domain`` may be
given many times or as a glob, ``--connect`` many times (``LABEL=URI``), or the hosts
listed in an inventory file (:mod:`agent.host.inventory`): the command then runs on every
such running domain at once, with one result line per domain and a summary, and the
exit status is 1 if any failed (:mod:`agent.host.fleet_command`). The common options may
come before the command or after it (and its arguments); ``run`` and ``exec`` take
everything after the program as its arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from agent.argtypes import COUNT, SECONDS
from agent.host.client import QgaClient
from agent.host.errors import AgentError, ClientError, CommandNotFound
from agent.host.execution import NotSupported
from agent.host.fleet import TargetResult, run_all
from agent.host.fleet_command import freeze_thaw, run_fleet
from agent.host.inventory import check_hosts, named, parse_connect, parse_selector, read_inventory
from agent.host.operations import operation, program_argv
from agent.host.output import progress_bars, write_json
from agent.host.run_command import run_command

DEFAULT_JOBS = 16
DEFAULT_JOBS_PER_HOST = 8
STOPPING = (signal.SIGTERM, signal.SIGHUP)  # stop as Ctrl-C does: a freeze thawed first
FREEZE_ACTIONS = {
    "status": "is the guest frozen?",
    "freeze": "freeze the guest's filesystems (or only MOUNTPOINTs)",
    "thaw": "thaw them",
    "freeze-thaw": "freeze, run a host command while frozen, thaw whatever happens",
}


def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, on the main parser (``top``: with their
    defaults) and on each subcommand's, where they leave unset what is not given, so
    that they may come before the command or after it. ``--domain`` given after the
    command goes to ``more_domains``, added to those given before by :func:`main`."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("options of every command")
    group.add_argument("--address", default=default(None), help="unix socket of the agent")
    group.add_argument(
        "-c",
        "--connect",
        metavar="[LABEL=]URI",
        action="append",
        dest="connect" if top else "more_connect",
        default=default([]),
        help="libvirt URI (qemu:///system), repeatable: LABEL names the host"
        " (default: the URI's host name)",
    )
    group.add_argument(
        "-i",
        "--inventory",
        metavar="FILE",
        default=default(None),
        help="hosts, a line each: LABEL URI [DOMAIN-GLOB...] (docs/fleets.md)",
    )
    group.add_argument(
        "-d",
        "--domain",
        action="append",
        dest="domain" if top else "more_domains",
        default=default([]),
        metavar="[LABEL:]DOMAIN",
        help="libvirt domain name or glob, of host LABEL only if given (repeatable)",
    )
    group.add_argument(
        "--timeout", type=SECONDS, default=default(30.0), help="seconds per request (default 30)"
    )
    group.add_argument(
        "--jobs",
        type=COUNT,
        default=default(DEFAULT_JOBS),
        help=f"domains served at once (default {DEFAULT_JOBS})",
    )
    group.add_argument(
        "--jobs-per-host",
        type=COUNT,
        default=default(DEFAULT_JOBS_PER_HOST),
        help=f"domains of one host served at once (default {DEFAULT_JOBS_PER_HOST})",
    )
    group.add_argument(
        "--domain-timeout",
        type=SECONDS,
        default=default(600.0),
        help="seconds for the whole command on one of several domains (default 600)",
    )
    group.add_argument(
        "--host-timeout",
        type=SECONDS,
        default=default(30.0),
        help="seconds to connect to a host and list its domains (default 30)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="one JSON line per target (docs/client.md)",
    )
    group.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default=default("auto"),
        help="progress bars for get/put (auto: on a terminal, for files over 1 MiB)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-qga-client",
        description="Talk to QEMU guest agents: over a unix socket, or through libvirt."
        " Give --address, or --connect and --domain.",
    )
    _common_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, what: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=what, description=what)
        _common_options(sub, top=False)
        return sub

    command("ping", "is the agent alive?")
    command("sync", "guest-sync with a random id")
    command("info", "version and commands (JSON)")
    run = command("run", "run a guest program as over ssh: live output, stdin, exit status")
    run.add_argument("-t", action="store_true", help="on a terminal (interactive)")
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="(repeatable)")
    run.add_argument("--cwd", metavar="DIR", help="the program's directory in the guest")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS")
    command("cat", "print a guest file").add_argument("path")
    get = command("get", "copy a guest file here ({domain} in LOCAL: its name)")
    get.add_argument("path")
    get.add_argument("local")
    put = command("put", "copy a local file to the guest ({domain} in PATH: its name)")
    put.add_argument("local")
    put.add_argument("path")
    freeze = command("fsfreeze", "guest filesystem freeze")
    actions = freeze.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, what in FREEZE_ACTIONS.items():
        action = actions.add_parser(name, help=what, description=what)
        _common_options(action, top=False)
        if name in ("freeze", "freeze-thaw"):
            action.add_argument("mountpoints", nargs="*", metavar="MOUNTPOINT")
    freeze_thaw = actions.choices["freeze-thaw"]
    freeze_thaw.add_argument(
        "--run", metavar="COMMAND", help="the host shell command to run while frozen"
    )
    freeze_thaw.add_argument(
        "--deadline",
        type=SECONDS,
        default=60.0,
        help="seconds for freezing and COMMAND together (default 60)",
    )
    exec_ = command("exec", "run a guest program, print its output at the end")
    exec_.add_argument("path")
    exec_.add_argument("args", nargs=argparse.REMAINDER)
    execute = command("execute", "any command, arguments as JSON")
    execute.add_argument("name")
    execute.add_argument("arguments", nargs="?", default="{}", help="a JSON object")
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked beyond what argparse checks. ``hosts`` and
    ``selectors`` are what ``--connect``, ``--inventory`` and ``--domain`` name."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.domain += vars(args).pop("more_domains", [])
    args.connect += vars(args).pop("more_connect", [])
    libvirt = bool(args.connect or args.inventory)
    if args.address and libvirt:
        parser.error("--address and --connect (or --inventory) exclude each other")
    if not args.address and not libvirt:
        parser.error("give --address, or --connect and --domain")
    if args.domain and not libvirt:
        parser.error("--domain needs --connect")
    try:
        args.hosts = [parse_connect(text) for text in args.connect]
        if args.inventory:
            args.hosts += read_inventory(args.inventory)
        check_hosts(args.hosts)
        args.selectors = [parse_selector(text, args.hosts) for text in args.domain]
    except (ValueError, OSError) as err:
        parser.error(str(err))
    if libvirt and not args.domain and not any(host.globs for host in args.hosts):
        parser.error("--connect needs --domain (or domain globs in the inventory)")
    if not hasattr(args, "mountpoints"):
        args.mountpoints = []
    single = len(args.hosts) == len(args.selectors) == 1 and not args.selectors[0].is_glob
    args.fleet = libvirt and not single
    if args.fleet and args.command in ("cat", "run"):
        parser.error(f"{args.command} needs one domain (cat: use get with {{domain}} in LOCAL)")
    if args.fleet and args.command == "get" and "{domain}" not in args.local:
        parser.error("get from several domains needs {domain} in LOCAL")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    command = run_fleet if args.fleet else _single
    try:
        if args.command == "run":  # it forwards signals to the program
            return trio.run(command, args)
        return trio.run(stopped_by_signals, command, args)
    except AgentError as err:
        print(f"trio-qga-client: {err.error_class}: {err.desc}", file=sys.stderr)
        return 2
    except ClientError as err:
        print(f"trio-qga-client: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError, NotSupported) as err:  # a local file, bad JSON, run -t
        print(f"trio-qga-client: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


async def stopped_by_signals(
    command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """``command(args)``, cancelled by SIGTERM or SIGHUP as Ctrl-C cancels it: what it
    holds is let go on the way out (a freeze is thawed); the status is then 128 + the
    signal's number."""
    stopped_by: int | None = None

    async def watch(scope: trio.CancelScope, task_status: trio.TaskStatus[None]) -> None:
        nonlocal stopped_by
        with trio.open_signal_receiver(*STOPPING) as received:
            task_status.started()
            async for number in received:
                stopped_by = number
                scope.cancel()
                return

    status = 0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch, nursery.cancel_scope)
            status = await command(args)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the command's own error, alone: as it was raised
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return 128 + stopped_by if stopped_by is not None else status


# ---------------------------------------------------------------- one agent --
async def _open(args: argparse.Namespace) -> QgaClient:
    if args.hosts:
        [host], [selector] = args.hosts, args.selectors
        return await QgaClient.connect_libvirt(
            host.uri, selector.domain, request_timeout=args.timeout
        )
    return await QgaClient.connect_unix(args.address, request_timeout=args.timeout)


def _single_name(args: argparse.Namespace) -> str:
    """The one target's name: the socket, or the domain (with its label if it has one)."""
    if not args.hosts:
        address: str = args.address
        return address
    [host], [selector] = args.hosts, args.selectors
    return f"{host.label}:{selector.domain}" if named(args.hosts) else selector.domain


async def _single(args: argparse.Namespace) -> int:
    target = _single_name(args)
    if args.command == "fsfreeze" and args.action == "freeze-thaw":

        @asynccontextmanager
        async def connect(_: str) -> AsyncIterator[QgaClient]:
            async with await _open(args) as client:
                yield client

        return await freeze_thaw(args, [target], connect)
    if args.json:
        return await _single_json(args, target)
    async with await _open(args) as client:
        command: str = args.command
        if command == "run":
            argv = program_argv(args)
            return await run_command(client, argv, terminal=args.t, env=args.env, cwd=args.cwd)
        if command == "cat":
            sys.stdout.buffer.write(await client.read_file(args.path))
        elif command == "exec":
            return await _exec(client, args.path, args.args)
        else:
            with progress_bars(args.progress, sys.stderr) as bars:
                value = await operation(args, bars)(client, "")
            _print_value(command, value)
    return 0


async def _single_json(args: argparse.Namespace, target: str) -> int:
    """The one JSON document of a single target, errors included; the exit status as
    without ``--json``."""
    with progress_bars(args.progress, sys.stderr) as bars:
        operate = operation(args, bars)

        async def one(_: str) -> Any:
            async with await _open(args) as client:
                return await operate(client, "")

        [result] = await run_all([target], one, limit=1, each=math.inf)
    write_json([result], sys.stdout)
    return _status(result)


def _status(result: TargetResult) -> int:
    """A single target's exit status: 0, a program's own status (exec, run), 2 for an
    error reply of the agent, else 1."""
    if result.ok:
        return 0
    if result.error and result.error.kind == "ExitStatus":
        status: int = result.value["status"]
        return status
    return 2 if result.error and result.error.from_agent else 1


def _print_value(command: str, value: Any) -> None:
    if command in ("info", "execute"):
        print(json.dumps(value, indent=2, sort_keys=True))
    elif command in ("sync", "fsfreeze"):
        print(value)


async def _exec(client: QgaClient, path: str, args: list[str]) -> int:
    if "guest-exec" not in await client.commands():
        raise CommandNotFound("guest-exec", "CommandNotFound", "the agent does not offer it")
    result = await client.exec(path, args)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    if result.stdout_truncated or result.stderr_truncated:
        print("trio-qga-client: output truncated by the agent", file=sys.stderr)
    return result.shell_status


if __name__ == "__main__":
    sys.exit(main())
