"""The seams to the system: the real executor and the system root."""

from __future__ import annotations

from pathlib import Path

from agent.system.executor import CommandResult, ProcessExecutor, SystemRoot, describe_failure


async def test_process_executor_runs_and_captures() -> None:
    result = await ProcessExecutor().run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin=b"in")
    assert result == CommandResult(3, b"in", b"err\n")


async def test_process_executor_passes_the_environment() -> None:
    result = await ProcessExecutor().run(["sh", "-c", 'printf %s "$X"'], env={"X": "y"})
    assert result.stdout == b"y"


def test_system_root_maps_absolute_paths(tmp_path: Path) -> None:
    assert SystemRoot(tmp_path).path("/etc/passwd") == tmp_path / "etc" / "passwd"
    assert SystemRoot().path("/etc/passwd") == Path("/etc/passwd")


def test_failures_say_what_ran_and_what_it_said() -> None:
    assert describe_failure(["shutdown", "-h", "now"], CommandResult(1, b"", b"no\n")) == (
        "shutdown -h now failed (exit status 1): no"
    )
    assert describe_failure(["x y"], CommandResult(-9, b"", b"")) == (
        "'x y' failed (killed by signal 9)"
    )
