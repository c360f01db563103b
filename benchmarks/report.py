"""The benchmarks' rows and tables: each agent's median and range over its rounds, and
ratios taken round by round (two agents measured at the same moment of machine load).

Agents are named by the benchmarks: one or more trio-qga builds, ``qemu-ga`` and
``floor`` (the bare stack, ``benchmarks/stack_floor.py``, or an interpreter that only
imports trio and pydantic for the start-up and memory rows).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

QEMU_GA = "qemu-ga"
FLOOR = "floor"
# A build is worse than the base when its median is worse by more than this share,
# or lies outside the base's own rounds on the worse side.
TOLERANCE = 0.10


@dataclass
class Metric:
    """One row: per-round figures of each agent and, where it has one, of the floor."""

    key: str  # the row's name for --only
    title: str
    higher_is_better: bool = False
    rounds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, who: str, value: float) -> None:
        self.rounds.setdefault(who, []).append(value)

    def median(self, who: str) -> float:
        return statistics.median(self.rounds[who])

    def ratios(self, who: str, other: str) -> list[float]:
        """Round by round (the same moment of machine load), ``who`` / ``other``."""
        pairs = zip(self.rounds[who], self.rounds[other], strict=False)
        return [mine / theirs for mine, theirs in pairs if theirs]


def figure(value: float) -> str:
    """Three significant digits or so, thousands grouped."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(values: list[float], unit: str = "") -> str:
    """The median and, over several rounds, their range."""
    median = figure(statistics.median(values)) + unit
    if len(values) == 1:
        return median
    return f"{median} ({figure(min(values))}-{figure(max(values))})"


def verdict(metric: Metric, base: str, build: str) -> str:
    """``build`` against ``base`` under the project's rule: "worse" when its median is
    worse by more than TOLERANCE or beyond the worst of the base's rounds; "better"
    when it is beyond the best of them; else nothing to say."""
    median, rounds = metric.median(build), metric.rounds[base]
    sign = -1 if metric.higher_is_better else 1  # figures made "lower is better"
    change = sign * (median / metric.median(base) - 1)
    ranged = len(rounds) > 1  # a single round has no range to fall outside of
    if change > TOLERANCE or (ranged and sign * median > max(sign * value for value in rounds)):
        return f"worse by {change:.0%}"
    if ranged and sign * median < min(sign * value for value in rounds):
        return f"better by {-change:.0%}"
    return ""


def table(metrics: Iterable[Metric], builds: list[str]) -> str:
    """A Markdown table of ``metrics``: for each of ``builds`` (trio-qga's, one or two),
    its median and range; with two, the second against the first (B/A and the
    verdict); qemu-ga's and the floor's medians, and each build against them."""
    comparing = len(builds) == 2
    head = ["row", *builds]
    if comparing:
        head += [f"{builds[1]}/{builds[0]}", "verdict"]
    head += [QEMU_GA, *(f"{b}/{QEMU_GA}" for b in builds), FLOOR, *(f"{b}/{FLOOR}" for b in builds)]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for metric in metrics:
        cells = [f"`{metric.key}` {metric.title}"]
        cells += [spread(metric.rounds[b]) for b in builds]
        if comparing:
            cells += [spread(metric.ratios(builds[1], builds[0]), "x"), verdict(metric, *builds)]
        for other in (QEMU_GA, FLOOR):
            present = other in metric.rounds
            cells.append(figure(metric.median(other)) if present else "")
            cells += [
                figure(statistics.median(metric.ratios(b, other))) + "x" if present else ""
                for b in builds
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def footnote() -> str:
    return (
        "(medians over the rounds, with their range; ratios taken round by round, their"
        " median; higher is better for the rows per second and MiB/s, lower for the others;"
        f" python {sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    )


def write_json(path: Path, metrics: Iterable[Metric], **about: object) -> None:
    """Every round's figures, by row, with what was compared."""
    rows = {
        m.key: {"title": m.title, "higher_is_better": m.higher_is_better, "rounds": m.rounds}
        for m in metrics
    }
    path.write_text(json.dumps({"about": about, "rows": rows}, indent=1))
