"""``trio-qga-client``: drive a guest agent from the host (the modern ``qemu-ga-client``).

trio-qga-client --address /tmp/qga.sock ping
trio-qga-client --address /tmp/qga.sock get /var/log/syslog ./syslog
trio-qga-client --address /tmp/qga.sock run -- make -C /src check
trio-qga-client --address /tmp/qga.sock run -t -- /bin/bash
trio-qga-client --connect qemu:///system --domain web1 exec /bin/uname -a
trio-qga-client --connect qemu:///system --domain 'web*' info --json
trio-qga-client -c qemu:///system -d 'db*' fsfreeze freeze-thaw --run 'lvcreate -s ...' /srv

With ``--address`` the client speaks to the agent's socket; with ``--connect URI
--domain NAME`` it goes through libvirt, which owns the channel. ``--domain`` may be
given many times or as a glob: the command then runs on every such running domain at
once (``--jobs`` at a time, ``--domain-timeout`` each), with one result line per domain
and a summary, and the exit status is 1 if any failed. The common options may come before
the command or after it (and its arguments); ``run`` and ``exec`` take everything after
the program as its arguments.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from agent.argtypes import COUNT, SECONDS
from agent.host.client import QgaClient
from agent.host.errors import AgentError, ClientError, CommandNotFound
from agent.host.execution import NotSupported
from agent.host.fleet import Connect, FreezeOutcome, TargetResult, error_info, freeze_all, run_all
from agent.host.operations import operation, program_argv
from agent.host.output import progress_bars, show_table, summary_of, write_json
from agent.host.run_command import run_command

DEFAULT_JOBS = 16
GLOB = set("*?[")
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
        "-c", "--connect", metavar="URI", default=default(None), help="libvirt URI (qemu:///system)"
    )
    group.add_argument(
        "-d",
        "--domain",
        action="append",
        dest="domain" if top else "more_domains",
        default=default([]),
        help="libvirt domain name or glob (repeatable; with --connect)",
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
        "--domain-timeout",
        type=SECONDS,
        default=default(600.0),
        help="seconds for the whole command on one of several domains (default 600)",
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
    """The command line, checked beyond what argparse checks."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.domain += vars(args).pop("more_domains", [])
    if args.address and args.connect:
        parser.error("--address and --connect exclude each other")
    if not args.address and not args.connect:
        parser.error("give --address, or --connect and --domain")
    if args.connect and not args.domain:
        parser.error("--connect needs --domain")
    if args.domain and not args.connect:
        parser.error("--domain needs --connect")
    if not hasattr(args, "mountpoints"):
        args.mountpoints = []
    args.fleet = bool(args.connect and (len(args.domain) > 1 or GLOB & set(args.domain[0])))
    if args.fleet and args.command in ("cat", "run"):
        parser.error(f"{args.command} needs one domain (cat: use get with {{domain}} in LOCAL)")
    if args.fleet and args.command == "get" and "{domain}" not in args.local:
        parser.error("get from several domains needs {domain} in LOCAL")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.fleet:
            return trio.run(_fleet, args)
        return trio.run(_single, args)
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


# ---------------------------------------------------------------- one agent --
async def _open(args: argparse.Namespace) -> QgaClient:
    if args.connect:
        return await QgaClient.connect_libvirt(
            args.connect, args.domain[0], request_timeout=args.timeout
        )
    return await QgaClient.connect_unix(args.address, request_timeout=args.timeout)


async def _single(args: argparse.Namespace) -> int:
    target: str = args.domain[0] if args.connect else args.address
    if args.command == "fsfreeze" and args.action == "freeze-thaw":

        @asynccontextmanager
        async def connect(_: str) -> AsyncIterator[QgaClient]:
            async with await _open(args) as client:
                yield client

        return await _freeze_thaw(args, [target], connect)
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


# ------------------------------------------------------------ many domains --
async def _fleet(args: argparse.Namespace) -> int:
    from agent.host.libvirt_channel import LibvirtConnection  # optional: libvirt-python

    started = trio.current_time()
    try:
        connection = await LibvirtConnection.open(args.connect, args.jobs)
    except ClientError as err:
        return _no_domain(args, err, started)
    try:
        try:
            names = match_domains(args.domain, await connection.domain_names())
        except ClientError as err:
            return _no_domain(args, err, started)

        @asynccontextmanager
        async def connect(name: str) -> AsyncIterator[QgaClient]:
            channel = await connection.channel(name, args.timeout)
            async with QgaClient(channel, request_timeout=args.timeout) as client:
                yield client

        if args.command == "fsfreeze" and args.action == "freeze-thaw":
            return await _freeze_thaw(args, names, connect)
        with progress_bars(args.progress, sys.stderr) as bars:
            operate = operation(args, bars)

            async def one(name: str) -> Any:
                async with connect(name) as client:
                    return await operate(client, name)

            results = await run_all(names, one, limit=args.jobs, each=args.domain_timeout)
        if args.json:
            write_json(results, sys.stdout, summary_of(results, trio.current_time() - started))
        else:
            show_table(results, sys.stdout, extra={})
        return 1 if any(not result.ok for result in results) else 0
    finally:
        await connection.aclose()


def _no_domain(args: argparse.Namespace, err: ClientError, started: float) -> int:
    """No domain reached (libvirt, or a glob that matches none): with ``--json`` the
    summary line says why, else the error goes to stderr as any other."""
    if not args.json:
        raise err
    write_json([], sys.stdout, summary_of([], trio.current_time() - started, error_info(err)))
    return 1


def match_domains(patterns: Sequence[str], running: Sequence[str]) -> list[str]:
    """Names and globs to domain names, in the order given, each once. A plain name is
    taken as it is (a stopped domain then fails on its own line); a glob that matches no
    running domain is an error."""
    found: list[str] = []
    for pattern in patterns:
        if GLOB & set(pattern):
            matched = fnmatch.filter(running, pattern)
            if not matched:
                raise ClientError(f"no running domain matches {pattern!r}")
        else:
            matched = [pattern]
        found += [name for name in matched if name not in found]
    return found


async def _freeze_thaw(args: argparse.Namespace, names: list[str], connect: Connect) -> int:
    started = trio.current_time()
    command = None
    if args.run:

        async def command() -> int:
            done = await trio.run_process(args.run, shell=True, check=False)
            return done.returncode

    outcome: FreezeOutcome = await freeze_all(
        names,
        connect,
        mountpoints=args.mountpoints or None,
        command=command,
        limit=args.jobs,
        each=args.timeout,
        deadline=args.deadline,
    )
    ran = None
    if args.run:
        ran = {"status": outcome.command_status, "error": outcome.command_error}
    if args.json:
        summary = summary_of(outcome.results, trio.current_time() - started)
        summary.update(all_frozen=outcome.all_frozen, command=ran)
        write_json(outcome.results, sys.stdout, summary)
    else:
        extra: dict[str, Any] = {"all frozen": outcome.all_frozen}
        if ran is not None:
            extra["command"] = ran["error"] or f"exit status {ran['status']}"
        show_table(outcome.results, sys.stdout, extra=extra)
    failed = any(not r.ok for r in outcome.results) or not outcome.all_frozen
    return 1 if failed or (args.run and outcome.command_status != 0) else 0


if __name__ == "__main__":
    sys.exit(main())
