"""What ``trio-qga-client`` shows: progress bars and the results table (rich), or JSON.

Progress goes to standard error (rate and time left, one bar per guest when there are
several); results go to standard output, one line per guest and a summary, or with
``--json`` one JSON line per guest and a summary line (the format of docs/client.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

import pybase64

from agent.host.client import Progress as ProgressCallback
from agent.host.errors import ClientError
from agent.host.fleet import ErrorInfo, TargetResult

if TYPE_CHECKING:
    from rich.progress import Progress

BIG = 1 << 20  # bytes: smaller copies get no bar unless asked ("always")


def _require_rich() -> None:
    """rich is the client's, not the guest's: it comes with the ``client`` extra."""
    try:
        import rich  # noqa: F401
    except ImportError as err:
        raise ClientError(
            "progress bars and tables need rich: pip install 'trio-qga[client]'"
        ) from err


class Bars:
    """Progress bars for copies, one per guest; ``callback(name)`` feeds one."""

    def __init__(self, progress: Progress | None, threshold: int) -> None:
        self._progress = progress
        self._threshold = threshold

    def callback(self, name: str) -> ProgressCallback | None:
        progress = self._progress
        if progress is None:
            return None
        task = None

        def update(done: int, total: int | None) -> None:
            nonlocal task
            if total is not None and total < self._threshold:
                return
            if task is None:
                task = progress.add_task(name, total=total)
            progress.update(task, completed=done, total=total)

        return update


@contextmanager
def progress_bars(mode: str, out: TextIO) -> Iterator[Bars]:
    """``mode``: ``always``, ``never``, or ``auto`` (on a terminal, copies over 1 MiB)."""
    if mode == "never" or (mode == "auto" and not out.isatty()):
        yield Bars(None, 0)
        return
    _require_rich()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    terminal = out.isatty()
    console = Console(file=out, force_terminal=terminal or None, width=None if terminal else 120)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield Bars(progress, 0 if mode == "always" else BIG)


def write_json(
    results: Sequence[TargetResult], out: TextIO, summary: dict[str, Any] | None = None
) -> None:
    """One JSON line per guest, then ``summary``'s line if given (docs/client.md)."""
    for result in results:
        out.write(json.dumps(result.as_json(), default=str) + "\n")
    if summary is not None:
        out.write(json.dumps({"summary": summary}, default=str) + "\n")
    out.flush()


def summary_of(
    results: Sequence[TargetResult], seconds: float, error: ErrorInfo | None = None
) -> dict[str, Any]:
    """The summary line's counts, and each host's where the results have hosts; a
    run-wide ``error`` (no guest reached) goes in it."""
    summary: dict[str, Any] = {
        **_counts(results),
        "seconds": round(seconds, 3),
        "error": error.as_json() if error else None,
    }
    hosts = _by_host(results)
    if hosts:
        summary["hosts"] = {label: _counts(group) for label, group in hosts.items()}
    return summary


def _counts(results: Sequence[TargetResult]) -> dict[str, int]:
    failed = sum(not result.ok for result in results)
    return {"targets": len(results), "ok": len(results) - failed, "failed": failed}


def _by_host(results: Sequence[TargetResult]) -> dict[str, list[TargetResult]]:
    """The results by host label, in order; empty where they have no host."""
    hosts: dict[str, list[TargetResult]] = {}
    for result in results:
        if result.host is not None:
            hosts.setdefault(result.host, []).append(result)
    return hosts


def show_table(results: Sequence[TargetResult], out: TextIO, extra: dict[str, Any]) -> None:
    """One line per guest, ``extra``'s items, and a summary line. Where the results have
    hosts, the table is grouped by host (its label once, then its domains by their own
    names), and each host has a summary line too."""
    _require_rich()
    from rich.console import Console
    from rich.table import Table

    hosts = _by_host(results)
    table = Table(box=None, pad_edge=False)
    columns = ["host"] if hosts else []
    for column in [*columns, "domain", "status", "result", "seconds"]:
        table.add_column(column, justify="right" if column == "seconds" else "left")
    groups: list[tuple[str | None, list[TargetResult]]] = [*hosts.items()] or [(None, [*results])]
    for label, group in groups:
        for index, result in enumerate(group):
            status = "ok" if result.ok else "FAILED"
            text = summary(result.value) if result.ok else str(result.error or "")
            row = [result.target, status, text, f"{result.seconds:.2f}"]
            if label is not None:
                row[:1] = [label if index == 0 else "", result.target.partition(":")[2]]
            table.add_row(*row)
    console = Console(file=out, width=200 if not out.isatty() else None)
    console.print(table)
    for label, group in hosts.items():
        console.print(f"{label}: {_tally(group)}")
    for key, value in extra.items():
        console.print(f"{key}: {value}")
    console.print(_tally(results, f" on {len(hosts)} hosts" if hosts else ""))


def _tally(results: Sequence[TargetResult], where: str = "") -> str:
    counts = _counts(results)
    return f"{counts['targets']} domains{where}: {counts['ok']} ok, {counts['failed']} failed"


def summary(value: Any) -> str:
    """A result on one line."""
    if value is None or value == {}:
        return "ok"
    if isinstance(value, dict) and "supported_commands" in value:  # guest-info
        return f"version {value.get('version')}, {len(value['supported_commands'])} commands"
    if isinstance(value, dict) and "bytes" in value:  # get, put
        return f"{value['bytes']} bytes"
    if isinstance(value, dict) and "out-data" in value:  # exec
        text = pybase64.b64decode(value["out-data"]).decode(errors="replace")
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 100 else line[:97] + "..."
