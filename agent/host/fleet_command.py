"""``trio-qga-client`` over many domains, on one host or many: connect, choose, run, report.

Every host is connected to once and at once (:mod:`agent.host.hosts`), the domains are
chosen (:mod:`agent.host.inventory`), the command runs on each within ``--jobs`` and
``--jobs-per-host`` (:mod:`agent.host.fleet`), and the report has a line per domain, or
per pattern of a host that could not be reached, in the hosts' order, then a summary
(:mod:`agent.host.output`), written before the connections are closed (one to a hung
host takes a while to give up on). ``fsfreeze freeze-thaw`` freezes every domain of
every host before its command runs, and does not begin while a host is unreached: the
snapshot could not be whole.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from agent.host.client import QgaClient
from agent.host.errors import ClientError
from agent.host.fleet import (
    Connect,
    ErrorInfo,
    FreezeOutcome,
    TargetResult,
    error_info,
    freeze_all,
    run_all,
)
from agent.host.hosts import reach_hosts
from agent.host.inventory import Plan, Unreached, named, needed, resolve
from agent.host.operations import operation
from agent.host.output import progress_bars, show_table, summary_of, write_json


async def run_fleet(args: argparse.Namespace) -> int:
    """The command of ``args`` on every domain it names; the exit status."""
    from agent.host.libvirt_channel import LibvirtConnection  # optional: libvirt-python

    started = trio.current_time()
    grouped = named(args.hosts)
    hosts = needed(args.hosts, args.selectors)
    async with reach_hosts(
        hosts, LibvirtConnection.open, jobs=args.jobs_per_host, each=args.host_timeout
    ) as reached:
        lone = reached[hosts[0].label].error
        if not grouped and lone:  # one host, by its URI alone: its failure is the run's
            return _no_domain(args, lone, started)
        running = {
            label: None if entry.error else entry.running for label, entry in reached.items()
        }
        try:
            plan = resolve(args.hosts, args.selectors, running)
        except ClientError as err:
            return _no_domain(args, error_info(err), started)
        targets = {target.name: target for target in plan.targets}

        @asynccontextmanager
        async def connect(name: str) -> AsyncIterator[QgaClient]:
            target = targets[name]
            connection = reached[target.host.label].connection
            assert connection is not None  # a target's host was reached
            channel = await connection.channel(target.domain, args.timeout)
            async with QgaClient(channel, request_timeout=args.timeout) as client:
                yield client

        unreached = {
            entry.name: TargetResult(entry.name, False, error=reached[entry.host.label].error)
            for entry in plan.entries
            if isinstance(entry, Unreached)
        }
        host_of = {target.name: target.host.label for target in plan.targets}
        if args.command == "fsfreeze" and args.action == "freeze-thaw":
            return await freeze_thaw(args, list(targets), connect, plan, unreached)
        with progress_bars(args.progress, sys.stderr) as bars:
            operate = operation(args, bars)

            async def one(name: str) -> Any:
                async with connect(name) as client:
                    return await operate(client, name)

            done = await run_all(
                list(targets),
                one,
                limit=args.jobs,
                each=args.domain_timeout,
                hosts=host_of,
                per_host=args.jobs_per_host,
            )
        results = _in_order(plan, [*done, *unreached.values()], grouped)
        if args.json:
            write_json(results, sys.stdout, summary_of(results, trio.current_time() - started))
        else:
            show_table(results, sys.stdout, extra={})
        return 1 if any(not result.ok for result in results) else 0


def _no_domain(args: argparse.Namespace, error: ErrorInfo, started: float) -> int:
    """No domain reached (libvirt, or a glob that matches none): with ``--json`` the
    summary line says why, else the error goes to stderr as any other."""
    if not args.json:
        raise ClientError(error.desc)
    write_json([], sys.stdout, summary_of([], trio.current_time() - started, error))
    return 1


def _in_order(
    plan: Plan | None, results: Sequence[TargetResult], grouped: bool
) -> list[TargetResult]:
    """The results in the plan's order, each with its host's label when names have one."""
    if plan is None:
        return list(results)
    by_name = {result.target: result for result in results}
    ordered = []
    for entry in plan.entries:
        result = by_name[entry.name]
        if grouped:
            result.host = entry.host.label
        ordered.append(result)
    return ordered


async def freeze_thaw(
    args: argparse.Namespace,
    names: list[str],
    connect: Connect,
    plan: Plan | None = None,
    unreached: Mapping[str, TargetResult] | None = None,
) -> int:
    """``fsfreeze freeze-thaw`` over ``names`` (one target, or a fleet's ``plan``)."""
    started = trio.current_time()
    command = None
    if args.run:

        async def command() -> int:
            done = await trio.run_process(args.run, shell=True, check=False)
            return done.returncode

    if unreached:  # no whole snapshot: no guest is frozen for nothing
        why = ErrorInfo("Skipped", "not frozen: a host was not reached")
        outcome = FreezeOutcome([TargetResult(name, False, error=why) for name in names], False)
    else:
        hosts = {target.name: target.host.label for target in plan.targets} if plan else None
        outcome = await freeze_all(
            names,
            connect,
            mountpoints=args.mountpoints or None,
            command=command,
            limit=args.jobs,
            each=args.timeout,
            deadline=args.deadline,
            hosts=hosts,
            per_host=args.jobs_per_host,
        )
    grouped = named(args.hosts)
    results = _in_order(plan, [*outcome.results, *(unreached or {}).values()], grouped)
    ran = None
    if args.run:
        ran = {"status": outcome.command_status, "error": outcome.command_error}
    window = None if outcome.window is None else round(outcome.window, 3)
    if args.json:
        summary = summary_of(results, trio.current_time() - started)
        summary.update(all_frozen=outcome.all_frozen, command=ran, window=window)
        write_json(results, sys.stdout, summary)
    else:
        extra: dict[str, Any] = {"all frozen": outcome.all_frozen}
        if window is not None:
            extra["frozen window"] = f"{window:.3f} s, first freeze to last thaw"
        if ran is not None:
            extra["command"] = ran["error"] or (
                "did not run" if ran["status"] is None else f"exit status {ran['status']}"
            )
        show_table(results, sys.stdout, extra=extra)
    failed = any(not r.ok for r in results) or not outcome.all_frozen
    return 1 if failed or (args.run and outcome.command_status != 0) else 0
