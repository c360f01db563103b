"""``trio-qga-client``: drive a guest agent from the host (the modern ``qemu-ga-client``).

trio-qga-client --address /tmp/qga.sock run -- make -C /src check
trio-qga-client --address /tmp/qga.sock run -t -- /bin/bash
trio-qga-client --address /tmp/qga.sock ping
trio-qga-client --address /tmp/qga.sock get /var/log/syslog ./syslog
trio-qga-client --address /tmp/qga.sock exec /bin/uname -a
trio-qga-client --address /tmp/qga.sock execute guest-get-time
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import trio

from agent.client import AgentError, ClientError, CommandNotFound, Progress, QgaClient
from agent.client_run import NotSupported
from agent.run_command import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-qga-client", description="Talk to a QEMU guest agent over a unix socket."
    )
    parser.add_argument("--address", required=True, help="unix socket of the agent")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request (default 30)"
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar for get/put (auto: on a terminal, for files over 1 MiB)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run a guest program as over ssh: live output, stdin, exit status"
    )
    run.add_argument("-t", action="store_true", help="on a terminal (interactive)")
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="(repeatable)")
    run.add_argument("--cwd", metavar="DIR", help="the program's directory in the guest")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS")
    commands.add_parser("ping", help="is the agent alive?")
    commands.add_parser("sync", help="guest-sync with a random id")
    commands.add_parser("info", help="version and commands (JSON)")
    cat = commands.add_parser("cat", help="print a guest file")
    cat.add_argument("path")
    get = commands.add_parser("get", help="copy a guest file here")
    get.add_argument("path")
    get.add_argument("local")
    put = commands.add_parser("put", help="copy a local file to the guest")
    put.add_argument("local")
    put.add_argument("path")
    freeze = commands.add_parser("fsfreeze", help="guest filesystem freeze")
    freeze.add_argument("action", choices=("status", "freeze", "thaw"))
    freeze.add_argument("mountpoints", nargs="*", help="freeze only these")
    exec_ = commands.add_parser("exec", help="run a guest program, print its output at the end")
    exec_.add_argument("path")
    exec_.add_argument("args", nargs=argparse.REMAINDER)
    execute = commands.add_parser("execute", help="any command, arguments as JSON")
    execute.add_argument("name")
    execute.add_argument("arguments", nargs="?", default="{}", help="a JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return trio.run(_run, args)
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


async def _run(args: argparse.Namespace) -> int:
    async with await QgaClient.connect_unix(args.address, request_timeout=args.timeout) as client:
        command: str = args.command
        if command == "run":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            return await run_command(client, argv, terminal=args.t, env=args.env, cwd=args.cwd)
        if command == "ping":
            await client.ping()
        elif command == "sync":
            print(await client.sync())
        elif command == "info":
            _print_json(await client.execute("guest-info"))
        elif command == "cat":
            sys.stdout.buffer.write(await client.read_file(args.path))
        elif command == "get":
            await client.get_file(args.path, args.local, _progress(args, sys.stderr))
        elif command == "put":
            await client.put_file(args.local, args.path, _progress(args, sys.stderr))
        elif command == "fsfreeze":
            return await _fsfreeze(client, args.action, args.mountpoints)
        elif command == "exec":
            return await _exec(client, args.path, args.args)
        else:
            arguments = json.loads(args.arguments)
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
            _print_json(await client.execute(args.name, arguments))
    return 0


async def _fsfreeze(client: QgaClient, action: str, mountpoints: list[str]) -> int:
    if action == "status":
        print(await client.fsfreeze_status())
    elif action == "freeze":
        print(await client.fsfreeze_freeze(mountpoints or None))
    else:
        print(await client.fsfreeze_thaw())
    return 0


async def _exec(client: QgaClient, path: str, args: list[str]) -> int:
    if "guest-exec" not in await client.commands():
        raise CommandNotFound("guest-exec", "CommandNotFound", "the agent does not offer it")
    result = await client.exec(path, args)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    if result.stdout_truncated or result.stderr_truncated:
        print("trio-qga-client: output truncated by the agent", file=sys.stderr)
    return result.shell_status


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _progress(args: argparse.Namespace, out: TextIO) -> Progress | None:
    """A progress callback for big copies, or None."""
    if args.progress == "never" or (args.progress == "auto" and not out.isatty()):
        return None
    threshold = 0 if args.progress == "always" else 1 << 20

    def show(done: int, total: int | None) -> None:
        if total is not None and total < threshold:
            return
        mib = done / (1 << 20)
        if total:
            bar = "#" * (30 * done // total)
            out.write(f"\r[{bar:30}] {mib:8.1f} / {total / (1 << 20):.1f} MiB")
        else:
            out.write(f"\r{mib:8.1f} MiB")
        if total is not None and done >= total:
            out.write("\n")
        out.flush()

    return show


if __name__ == "__main__":
    sys.exit(main())
