"""The check that keeps the suite off the agent's default paths (``tests/support/default_paths.py``)
sees every kind of change to them, and fails the test that makes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.core.config import DEFAULT_CACHE_DIR, DEFAULT_PIDFILE, DEFAULT_STATEDIR
from tests.support.default_paths import DefaultPaths

pytest_plugins = ["pytester"]


@pytest.fixture
def paths(tmp_path: Path) -> DefaultPaths:
    """The default paths, moved into the test's temporary directory."""
    (tmp_path / "run").mkdir()
    return DefaultPaths(tmp_path / "cache", tmp_path / "run", tmp_path / "run" / "qemu-ga.pid")


def test_it_watches_the_agents_defaults() -> None:
    assert DefaultPaths.of_the_agent() == DefaultPaths(
        Path("/var/cache/trio-qga"), Path("/var/run"), Path("/var/run/qemu-ga.pid")
    )
    assert (DEFAULT_CACHE_DIR, DEFAULT_STATEDIR, DEFAULT_PIDFILE) == (
        "/var/cache/trio-qga",
        "/var/run",
        "/var/run/qemu-ga.pid",
    )


def test_creating_anything_there_is_seen(paths: DefaultPaths) -> None:
    before = paths.snapshot()
    paths.cache_dir.mkdir()
    (paths.cache_dir / "plugins.json").write_text("{}")
    for name in ("qga.state", "qga.state.isfrozen", "qga.state.corrupt-20260101T000000Z"):
        (paths.statedir / name).write_text("")
    paths.pidfile.write_text("1\n")
    (paths.statedir / "other.pid").write_text("1\n")  # not the agent's
    assert paths.changes(before) == [
        f"created {paths.cache_dir}",
        f"created {paths.cache_dir}/plugins.json",
        f"created {paths.pidfile}",
        f"created {paths.statedir}/qga.state",
        f"created {paths.statedir}/qga.state.corrupt-20260101T000000Z",
        f"created {paths.statedir}/qga.state.isfrozen",
    ]


def test_changing_or_removing_what_is_there_is_seen(paths: DefaultPaths) -> None:
    paths.cache_dir.mkdir()
    record = paths.cache_dir / "plugins.json"
    record.write_text("{}")
    state = paths.statedir / "qga.state"
    state.write_text("[global]\nfd_counter=1000\n")
    before = paths.snapshot()
    assert paths.changes(before) == []
    new = paths.statedir / "new"
    new.write_text("[global]\nfd_counter=1001\n")
    os.replace(new, state)  # replaced whole, as the agent does
    record.unlink()
    assert paths.changes(before) == [
        f"changed {paths.cache_dir}",
        f"changed {state}",
        f"removed {record}",
    ]


def test_a_test_that_writes_there_fails(pytester: pytest.Pytester, paths: DefaultPaths) -> None:
    pytester.makeconftest(
        f"""
        import pytest
        from pathlib import Path
        from tests.support.default_paths import DefaultPaths

        @pytest.fixture(scope="session")
        def default_paths():
            return DefaultPaths(Path({str(paths.cache_dir)!r}), Path({str(paths.statedir)!r}),
                                Path({str(paths.pidfile)!r}))
        """
    )
    pytester.makepyfile(
        f"""
        from pathlib import Path

        def test_leaves_the_paths_alone():
            pass

        def test_writes_a_record():
            Path({str(paths.cache_dir)!r}).mkdir()
        """
    )
    result = pytester.runpytest_inprocess("-p", "tests.support.default_paths")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_writes_a_record*",
            f"*Failed: this test changed the agent's default paths: *created {paths.cache_dir}'*",
        ]
    )
