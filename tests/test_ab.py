"""The A/B benchmark harness (``benchmarks/ab.py``) works end to end, so it cannot rot.

Its figures are not judged here (speed is never asserted): only that two builds,
qemu-ga and the floor are measured in rounds and tabled, that builds are
installed and kept, and that failures say what went wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import ab, bench_core, bench_request_path, builds
from benchmarks.report import Metric, verdict
from tests.support.reference import qemu_ga_binary


@pytest.mark.slow
@pytest.mark.qemu_ga
def test_ab_tables_two_builds_beside_qemu_ga_and_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole run, with this interpreter's agent standing in for both installs
    (``test_builds_*`` below installs them for real)."""
    qemu_ga_binary()
    here = builds.Build("this interpreter", Path(sys.executable))
    monkeypatch.setattr(builds, "revision", lambda rev, cache: here)
    monkeypatch.setattr(builds, "working_tree", lambda cache: here)
    figures = tmp_path / "figures.json"
    argv = ["--base", "HEAD", "--rounds", "2", "--quick", "--size", "1", "--json", str(figures)]
    assert ab.main([*argv, "--only", "ping-p50", "read-4k", "--cache", str(tmp_path)]) == 0

    rows = json.loads(figures.read_text())["rows"]
    assert list(rows) == ["ping-p50", "read-4k"]
    for row in rows.values():
        assert set(row["rounds"]) == {"A", "B", "qemu-ga", "floor"}
        assert all(len(values) == 2 and min(values) > 0 for values in row["rounds"].values())
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    head = table[0].split("|")
    assert "B/A" in table[0]
    assert table[2].startswith("| `ping-p50`")
    assert table[3].startswith("| `read-4k`")
    assert all(len(line.split("|")) == len(head) for line in table)


def test_the_request_path_is_measured_beside_the_floor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``benchmarks/bench_request_path.py`` runs a build (this interpreter's) in a
    process of its own and tables each row against the floor."""
    assert bench_request_path.main(["--rounds", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()]
    measured = [(row[1].strip(), row[2].strip()) for row in rows if len(row) > 2][2:]
    assert measured == [("trio-qga", "pings"), ("trio-qga", "small-reads")]
    assert all(float(row[3]) > 0 and row[5].strip().endswith("x") for row in rows[2:])


def test_ab_refuses_an_unknown_row(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ab.main(["--only", "ping-p50", "no-such-row"])
    assert exit_.value.code == 2
    assert "no row no-such-row; the rows: startup," in capsys.readouterr().err


def test_an_agent_that_does_not_start_is_reported_with_what_it_said(tmp_path: Path) -> None:
    failing = bench_core.Agent(
        "broken",
        lambda sock, workdir: [sys.executable, "-c", "import sys; sys.exit('no such option')"],
    )
    with (
        pytest.raises(bench_core.AgentError, match=r"status 1 before answering") as failure,
        bench_core.started(failing, tmp_path),
    ):
        pass
    assert "| no such option" in str(failure.value)


@pytest.mark.parametrize(
    ("base", "build", "higher_is_better", "said"),
    [
        ([10, 11, 12], [11, 11.5, 12.5], False, ""),
        ([10, 11, 12], [12.5, 13, 14], False, "worse by 18%"),  # over 10 %
        ([10, 10.2, 10.4], [10.5, 10.6, 10.7], False, "worse by 4%"),  # beyond its rounds
        ([10, 11, 12], [8, 9, 9.5], False, "better by 18%"),
        ([100, 110, 120], [95, 99, 100], True, "worse by 10%"),
        ([100, 110, 120], [130, 140, 150], True, "better by 27%"),
    ],
)
def test_verdict_is_the_projects_rule(
    base: list[float], build: list[float], higher_is_better: bool, said: str
) -> None:
    metric = Metric("row", "a row", higher_is_better, {"A": base, "B": build})
    assert verdict(metric, "A", "B") == said


@pytest.mark.slow
@pytest.mark.qemu_ga
def test_builds_install_a_revision_and_the_working_tree(tmp_path: Path) -> None:
    """Real installs (pip, into venvs under ``tmp_path``); a revision is kept by commit."""
    qemu_ga_binary()
    cache = tmp_path / "cache"
    base = builds.revision("HEAD", cache)
    tree = builds.working_tree(cache)
    commit = builds.git("rev-parse", "HEAD", what="HEAD")
    assert base.python == cache / commit / "venv" / "bin" / "python"
    ready = cache / commit / builds.READY
    stamped = ready.stat().st_mtime_ns
    assert builds.revision(commit, cache).python == base.python  # kept, not installed again
    assert ready.stat().st_mtime_ns == stamped
    for build in (base, tree):
        where = subprocess.run(
            [build.python, "-c", "import agent, trio_qga_procinfo; print(agent.__file__)"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert where.startswith(str(build.python.parent.parent))  # its own copy
        with bench_core.started(bench_core.trio_qga("agent", build.python), tmp_path) as started:
            assert started[0].poll() is None


def test_a_build_older_than_the_plugin_record_starts_without_cache_dir(tmp_path: Path) -> None:
    """Revisions before the plugin record (22c6f4c) refuse ``--cache-dir``: the
    harness asks the build's own usage (not the working tree's ``agent``, which
    ``-m`` would find from the project's root) and leaves the option out."""
    old = tmp_path / "bin" / "python"
    old.parent.mkdir()
    # Like ``python -m agent --help`` of an old build, but it finds the working
    # tree's agent (which has the option) when run from the project's root.
    old.write_text(
        "#!/bin/sh\n"
        "if [ -d agent ]; then echo '[--cache-dir DIR]'; else echo 'usage: [--no-plugins]'; fi\n"
    )
    old.chmod(0o755)
    assert not builds._keeps_plugin_record(old)
    assert subprocess.run([old], cwd=builds.ROOT, capture_output=True).stdout.startswith(b"[--")
    assert builds._keeps_plugin_record(Path(sys.executable))

    sock, workdir = tmp_path / "sock", tmp_path / "work"
    without = bench_core.trio_qga("old", old, plugin_record=False)
    assert "--cache-dir" not in without.command(sock, workdir)
    assert bench_core.first_start(without).command(sock, workdir) == without.command(sock, workdir)
    with_record = bench_core.trio_qga("new", sys.executable)
    assert with_record.command(sock, workdir)[-2:] == ["--cache-dir", str(workdir / "cache")]
    assert bench_core.first_start(with_record).command(sock, workdir)[-2:] == ["--cache-dir", ""]


def test_an_interrupted_install_leaves_no_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(home: Path, *args: str) -> None:
        assert (home / "venv").is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(builds, "_pip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        builds.revision("HEAD", tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == [
        f"{builds.git('rev-parse', 'HEAD', what='HEAD')}.lock"
    ]


def test_an_unknown_revision_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(builds.BuildError, match="revision 'no-such-branch' failed"):
        builds.revision("no-such-branch", tmp_path)
