"""``trio-qga-client``: drive a guest agent from the host (the modern ``qemu-ga-client``).

trio-qga-client --address /tmp/qga.sock ping
trio-qga-client --address /tmp/qga.sock get /var/log/syslog ./syslog
trio-qga-client --address /tmp/qga.sock run -- make -C /src check
trio-qga-client --address /tmp/qga.sock run -t -- /bin/bash
trio-qga-client --connect qemu:///system --domain web1 exec /bin/uname -a
trio-qga-client --connect qemu:///system --domain 'web*' --json info
trio-qga-client -c qemu:///system -d 'db*' fsfreeze freeze-thaw --run 'lvcreate -s ...'

With ``--address`` the client speaks to the agent's socket; with ``--connect URI
--domain NAME`` it goes through libvirt, which owns the channel. ``--domain`` may be
given many times or as a glob: the command then runs on every such running domain at
once (``--jobs`` at a time, ``--timeout`` each), with one result line per domain and a
summary, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from agent.host.client import QgaClient
from agent.host.errors import AgentError, ClientError, CommandNotFound
from agent.host.execution import NotSupported
from agent.host.fleet import Connect, FreezeOutcome, freeze_all, run_all
from agent.host.output import Bars, progress_bars, show_results
from agent.host.run_command import run_command

DEFAULT_JOBS = 16
GLOB = set("*?[")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-qga-client",
        description="Talk to QEMU guest agents: over a unix socket, or through libvirt.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="unix socket of the agent")
    where.add_argument("-c", "--connect", metavar="URI", help="libvirt URI (qemu:///system)")
    parser.add_argument(
        "-d",
        "--domain",
        action="append",
        default=[],
        help="libvirt domain name or glob (repeatable; with --connect)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request (default 30)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"domains served at once (default {DEFAULT_JOBS})",
    )
    parser.add_argument(
        "--domain-timeout",
        type=float,
        default=600.0,
        help="seconds for the whole command on one domain (default 600)",
    )
    parser.add_argument("--json", action="store_true", help="results as JSON, for scripts")
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bars for get/put (auto: on a terminal, for files over 1 MiB)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ping", help="is the agent alive?")
    commands.add_parser("sync", help="guest-sync with a random id")
    commands.add_parser("info", help="version and commands (JSON)")
    run = commands.add_parser(
        "run", help="run a guest program as over ssh: live output, stdin, exit status"
    )
    run.add_argument("-t", action="store_true", help="on a terminal (interactive)")
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="(repeatable)")
    run.add_argument("--cwd", metavar="DIR", help="the program's directory in the guest")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS")
    cat = commands.add_parser("cat", help="print a guest file")
    cat.add_argument("path")
    get = commands.add_parser("get", help="copy a guest file here ({domain} in LOCAL: its name)")
    get.add_argument("path")
    get.add_argument("local")
    put = commands.add_parser("put", help="copy a local file to the guest")
    put.add_argument("local")
    put.add_argument("path")
    freeze = commands.add_parser("fsfreeze", help="guest filesystem freeze")
    freeze.add_argument("action", choices=("status", "freeze", "thaw", "freeze-thaw"))
    freeze.add_argument("mountpoints", nargs="*", help="freeze only these")
    freeze.add_argument(
        "--run", metavar="COMMAND", help="freeze-thaw: run this host shell command while frozen"
    )
    freeze.add_argument(
        "--deadline",
        type=float,
        default=60.0,
        help="freeze-thaw: seconds for freezing and COMMAND together (default 60)",
    )
    exec_ = commands.add_parser("exec", help="run a guest program, print its output at the end")
    exec_.add_argument("path")
    exec_.add_argument("args", nargs=argparse.REMAINDER)
    execute = commands.add_parser("execute", help="any command, arguments as JSON")
    execute.add_argument("name")
    execute.add_argument("arguments", nargs="?", default="{}", help="a JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.connect and not args.domain:
        parser.error("--connect needs --domain")
    if args.domain and not args.connect:
        parser.error("--domain needs --connect")
    try:
        if args.connect and (len(args.domain) > 1 or GLOB & set(args.domain[0])):
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
async def _single(args: argparse.Namespace) -> int:
    if args.connect:
        client = await QgaClient.connect_libvirt(
            args.connect, args.domain[0], request_timeout=args.timeout
        )
    else:
        client = await QgaClient.connect_unix(args.address, request_timeout=args.timeout)
    async with client:
        command: str = args.command
        if command == "run":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            return await run_command(client, argv, terminal=args.t, env=args.env, cwd=args.cwd)
        if command == "cat":
            sys.stdout.buffer.write(await client.read_file(args.path))
        elif command == "fsfreeze" and args.action == "freeze-thaw":
            target = args.domain[0] if args.connect else args.address

            @asynccontextmanager
            async def same(_: str) -> AsyncIterator[QgaClient]:
                yield client

            return await _freeze_thaw(args, [target], same)
        elif command == "exec":
            return await _exec(client, args.path, args.args)
        else:
            with progress_bars(args.progress, sys.stderr) as bars:
                value = await _operation(args, bars)(client, "")
            _print_value(command, value)
    return 0


def _print_value(command: str, value: Any) -> None:
    if command in ("info", "execute"):
        print(json.dumps(value, indent=2, sort_keys=True))
    elif command in ("sync", "fsfreeze"):
        print(value)


def _operation(args: argparse.Namespace, bars: Bars) -> Callable[[QgaClient, str], Awaitable[Any]]:
    """The command as an operation on one client; its result (JSON-able) for the table."""
    command: str = args.command

    async def operate(client: QgaClient, name: str) -> Any:
        if command == "ping":
            return await client.ping()
        if command == "sync":
            return await client.sync()
        if command == "info":
            return await client.execute("guest-info")
        if command == "get":
            local = args.local.replace("{domain}", name)
            return await client.get_file(
                args.path, local, bars.callback(name or os.path.basename(args.path))
            )
        if command == "put":
            path = args.path.replace("{domain}", name)
            return await client.put_file(
                args.local, path, bars.callback(name or os.path.basename(args.local))
            )
        if command == "fsfreeze":
            return await _fsfreeze(client, args.action, args.mountpoints)
        if command == "exec":
            result = await client.exec(args.path, args.args)
            if result.shell_status:
                raise ClientError(f"exit status {result.shell_status}: {result.stderr!r}")
            return result.stdout.decode(errors="replace")
        if command == "execute":
            return await client.execute(args.name, _json_object(args.arguments))
        raise ValueError(f"{command} needs a single agent")

    return operate


def _json_object(text: str) -> dict[str, Any]:
    arguments = json.loads(text)
    if not isinstance(arguments, dict):
        raise ValueError("arguments must be a JSON object")
    return arguments


async def _fsfreeze(client: QgaClient, action: str, mountpoints: list[str]) -> Any:
    if action == "status":
        return await client.fsfreeze_status()
    if action == "freeze":
        return await client.fsfreeze_freeze(mountpoints or None)
    return await client.fsfreeze_thaw()


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

    if args.command in ("cat", "run"):
        raise ValueError(f"{args.command} needs one domain (cat: use get with {{domain}} in LOCAL)")
    if args.command == "get" and "{domain}" not in args.local:
        raise ValueError("get from several domains needs {domain} in LOCAL")
    connection = await LibvirtConnection.open(args.connect, args.jobs)
    try:
        names = match_domains(args.domain, await connection.domain_names())

        @asynccontextmanager
        async def connect(name: str) -> AsyncIterator[QgaClient]:
            channel = await connection.channel(name, args.timeout)
            async with QgaClient(channel, request_timeout=args.timeout) as client:
                yield client

        if args.command == "fsfreeze" and args.action == "freeze-thaw":
            return await _freeze_thaw(args, names, connect)
        with progress_bars(args.progress, sys.stderr) as bars:
            operate = _operation(args, bars)

            async def one(name: str) -> Any:
                async with connect(name) as client:
                    return await operate(client, name)

            results = await run_all(names, one, limit=args.jobs, each=args.domain_timeout)
        show_results(results, sys.stdout, as_json=args.json, extra={})
        return 1 if any(not result.ok for result in results) else 0
    finally:
        await connection.aclose()


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
    extra: dict[str, Any] = {"all_frozen": outcome.all_frozen}
    if args.run:
        extra["command_status"] = outcome.command_status
        if outcome.command_error:
            extra["command_error"] = outcome.command_error
    show_results(outcome.results, sys.stdout, as_json=args.json, extra=extra)
    failed = any(not r.ok for r in outcome.results) or not outcome.all_frozen
    return 1 if failed or (args.run and outcome.command_status != 0) else 0


if __name__ == "__main__":
    sys.exit(main())
