"""What each ``trio-qga-client`` subcommand does on one agent, and its result as JSON.

One operation serves one agent and many (:mod:`agent.host.fleet`): its value is what
``--json`` prints as ``return`` (docs/client.md) and what the table sums up on one line.
Names and encodings follow the agent's own replies where it has one: bytes are base64
under ``buf-b64`` (``guest-file-read``) or ``out-data``/``err-data``
(``guest-exec-status``). A command's own return goes through its model
(:func:`as_json`), so what is printed is checked against the schema.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pybase64
import trio

from agent.host.client import QgaClient
from agent.host.fleet import ErrorInfo, Unsuccessful
from agent.host.output import Bars

Operation = Callable[[QgaClient, str], Awaitable[Any]]  # (client, target name) -> value


def operation(args: argparse.Namespace, bars: Bars) -> Operation:
    """The subcommand of ``args`` as an operation on one client."""
    command: str = args.command

    async def operate(client: QgaClient, name: str) -> Any:
        if command in ("ping", "info"):
            return await as_json(client, f"guest-{command}")
        if command == "sync":
            return await client.sync()
        if command == "cat":
            data = await client.read_file(args.path)
            return {"count": len(data), "buf-b64": pybase64.b64encode(data).decode("ascii")}
        if command == "get":
            local = args.local.replace("{domain}", name)
            progress = bars.callback(name or os.path.basename(args.path))
            done = await client.get_file(args.path, local, progress)
            return {"path": args.path, "local": local, "bytes": done}
        if command == "put":
            path = args.path.replace("{domain}", name)
            progress = bars.callback(name or os.path.basename(args.local))
            done = await client.put_file(args.local, path, progress)
            return {"path": path, "local": args.local, "bytes": done}
        if command == "fsfreeze":
            return await _fsfreeze(client, args.action, args.mountpoints)
        if command == "exec":
            result = await client.exec(args.path, args.args)
            truncated = (result.stdout_truncated, result.stderr_truncated)
            return checked(program_json(result, truncated))
        if command == "run":
            return await _run_collected(client, args)
        if command == "execute":
            return await as_json(client, args.name, json_object(args.arguments))
        raise ValueError(f"{command} needs a single agent")

    return operate


async def as_json(client: QgaClient, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """``command``'s return through its model and back to JSON by wire names, its
    absent members absent: the agent's reply value, checked against the schema
    (as it came for a command the schema lacks)."""
    value = client.typed(command, await client.execute(command, arguments))
    if command not in client.models.defs.commands or value is None:
        return value
    return client.models.dump_return(command, value)


async def _fsfreeze(client: QgaClient, action: str, mountpoints: list[str]) -> Any:
    if action == "status":
        return await client.fsfreeze_status()
    if action == "freeze":
        return await client.fsfreeze_freeze(mountpoints or None)
    return await client.fsfreeze_thaw()


def program_argv(args: argparse.Namespace) -> list[str]:
    """``run``'s program and arguments, without the ``--`` that may come first."""
    argv: list[str] = args.argv
    return argv[1:] if argv[:1] == ["--"] else argv


async def _run_collected(client: QgaClient, args: argparse.Namespace) -> dict[str, Any]:
    """``run`` for ``--json``: our stdin (unless a terminal) in, the output collected."""
    if args.t:
        raise ValueError("run -t is interactive: it has no --json output")
    stdin = b""
    if not os.isatty(0):
        stdin = await trio.to_thread.run_sync(sys.stdin.buffer.read)
    execution = await client.run(program_argv(args), env=args.env, cwd=args.cwd, stdin=stdin)
    return checked(program_json(await execution))


class ProgramEnd(Protocol):
    """How a guest program ended (an ExecResult or a RunResult)."""

    @property
    def exitcode(self) -> int | None: ...

    @property
    def signal(self) -> int | None: ...

    @property
    def stdout(self) -> bytes: ...

    @property
    def stderr(self) -> bytes: ...

    @property
    def shell_status(self) -> int: ...


def program_json(end: ProgramEnd, truncated: tuple[bool, bool] = (False, False)) -> dict[str, Any]:
    """A guest program's end as ``guest-exec-status`` gives it, with the status a shell
    would give (the exit code, or 128 + signal)."""
    return {
        "status": end.shell_status,
        "exitcode": end.exitcode,
        "signal": end.signal,
        "out-data": pybase64.b64encode(end.stdout).decode("ascii"),
        "err-data": pybase64.b64encode(end.stderr).decode("ascii"),
        "out-truncated": truncated[0],
        "err-truncated": truncated[1],
    }


def checked(program: dict[str, Any]) -> dict[str, Any]:
    """``program``, or :class:`Unsuccessful` with it when its status is not zero."""
    status: int = program["status"]
    if status == 0:
        return program
    desc = f"exit status {status}"
    stderr = pybase64.b64decode(program["err-data"]).decode(errors="replace").strip()
    if stderr:
        desc += f": {stderr.splitlines()[-1]}"
    raise Unsuccessful(ErrorInfo("ExitStatus", desc), program)


def json_object(text: str) -> dict[str, Any]:
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"arguments are not JSON: {err}") from err
    if not isinstance(arguments, dict):
        raise ValueError("arguments must be a JSON object")
    return arguments
