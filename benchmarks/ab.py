"""A/B benchmark: a git revision (A) and the working tree (B), beside qemu-ga and the floor.

    .venv/bin/python benchmarks/ab.py --base main [--rounds 5] [--quick] [--only ROW ...]

Runs the rows of ``benchmarks/bench_core.py`` and ``benchmarks/bench_files.py``
for two builds of trio-qga, each installed by pip into a venv of its own
(``benchmarks/builds.py``), in alternating rounds with qemu-ga and the stack's
floor, and prints one table: each build's median and range over the rounds,
B/A round by round, qemu-ga's and the floor's medians and each build against
them, and a verdict on B by the project's rule (no row worse than A by more
than 10 % in the median, nor beyond A's own rounds). ``--list`` names the rows;
docs/benchmarks.md says what each measures.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # run as a script: the project's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_core, bench_files, builds, report


def rows() -> dict[str, str]:
    """Every row: key -> title, in the order of the table."""
    metrics = bench_core.core_metrics() + bench_files.files_metrics()
    return {m.key: m.title for m in metrics}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="main", help="git revision of build A (default main)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer requests per round and a 16 MiB file"
    )
    parser.add_argument("--only", nargs="+", metavar="ROW", help="these rows only (see --list)")
    parser.add_argument(
        "--size", type=int, help="MiB of the file-transfer rows' file (default 64, quick 16)"
    )
    parser.add_argument(
        "--cache", type=Path, default=builds.DEFAULT_CACHE, help="where builds are kept"
    )
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    parser.add_argument("--list", action="store_true", help="name the rows and exit")
    args = parser.parse_args(argv)
    if args.only:
        unknown = sorted(set(args.only) - rows().keys())
        if unknown:
            parser.error(f"no row {', '.join(unknown)}; the rows: {', '.join(rows())}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for key, title in rows().items():
            print(f"{key:22} {title}")
        return 0
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("ab: interrupted; the agents are stopped and scratch files removed", file=sys.stderr)
        return 130
    except (builds.BuildError, bench_core.AgentError) as err:
        print(f"ab: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    print(f"ab: installing {args.base} and the working tree ...", file=sys.stderr)
    base = builds.revision(args.base, args.cache)
    tree = builds.working_tree(args.cache)
    agents = [
        bench_core.trio_qga(name, build.python, plugin_record=build.plugin_record)
        for name, build in (("A", base), ("B", tree))
    ]
    print(f"ab: A = {base.label}, B = {tree.label}; {args.rounds} rounds", file=sys.stderr)
    size = args.size or (16 if args.quick else 64)
    metrics = bench_core.measure(agents, args.rounds, quick=args.quick, only=args.only)
    metrics += bench_files.measure(agents, args.rounds, size_mib=size, only=args.only)
    print(f"A = {base.label}; B = {tree.label}; {args.rounds} alternating rounds")
    print()
    print(report.table(metrics, ["A", "B"]))
    print()
    print(report.footnote() + f"; file rows: a {size} MiB file")
    if args.json:
        report.write_json(
            args.json, metrics, A=base.label, B=tree.label, rounds=args.rounds, quick=args.quick
        )
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends a run as Ctrl-C does: agents stopped, scratch files removed."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
