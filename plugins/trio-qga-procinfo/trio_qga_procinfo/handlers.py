"""The plugin's handlers: plain trio-qga handlers, checked against schema.json."""

from __future__ import annotations

import re

import trio

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError
from agent.system.executor import describe_failure

handlers = HandlerSet()

_PROCESS_FIELDS = ["pid", "name", "status", "username", "cpu_times", "memory_info", "cmdline"]
_UNIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9:_.@\\-]*")  # never an option


@handlers.command("guest-x-process-list")
async def process_list(ctx: AgentContext, name: str | None) -> list[dict[str, object]]:
    # /proc is read file by file: a thread keeps a big process table off the event loop.
    return await trio.to_thread.run_sync(_processes, name)


def _processes(name: str | None) -> list[dict[str, object]]:
    import psutil  # on first use: plugins load at the agent's start

    result = []
    for process in psutil.process_iter(_PROCESS_FIELDS):
        info = process.info
        if info["cpu_times"] is None or info["memory_info"] is None:
            continue  # vanished or not ours to see
        if name is not None and info["name"] != name:
            continue
        entry: dict[str, object] = {
            "pid": info["pid"],
            "name": info["name"] or "",
            "state": info["status"] or "unknown",
            "cpu-seconds": float(info["cpu_times"].user + info["cpu_times"].system),
            "rss-bytes": int(info["memory_info"].rss),
            "cmdline": list(info["cmdline"] or []),
        }
        if info["username"]:
            entry["user"] = info["username"]
        result.append(entry)
    return result


@handlers.command("guest-x-service-status")
async def service_status(ctx: AgentContext, name: str) -> dict[str, object]:
    if not _UNIT_NAME.fullmatch(name):
        raise GenericError(f"invalid unit name '{name}'")
    argv = ["systemctl", "show", name, "--property=LoadState,ActiveState,SubState,MainPID"]
    try:
        result = await ctx.executor.run(argv)
    except FileNotFoundError as err:
        raise GenericError("systemctl is not available: this guest does not run systemd") from err
    if result.returncode != 0:
        raise GenericError(describe_failure(argv, result))
    properties = dict(
        line.split("=", 1) for line in result.stdout.decode().splitlines() if "=" in line
    )
    status: dict[str, object] = {
        "name": name,
        "load-state": properties.get("LoadState", "unknown"),
        "active-state": properties.get("ActiveState", "unknown"),
        "sub-state": properties.get("SubState", "unknown"),
    }
    main_pid = properties.get("MainPID", "0")
    if main_pid.isdigit() and int(main_pid) > 0:
        status["main-pid"] = int(main_pid)
    return status
