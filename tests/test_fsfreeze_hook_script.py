"""The fsfreeze hook the packages install as /etc/qemu/fsfreeze-hook
(``agent/data/fsfreeze-hook``): qemu-ga's hook directory convention, and a
failed freeze undone, run here from a copy in the test's directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from agent.errors import GenericError
from agent.system.fsfreeze.hook import run_hook

HOOK = Path(str(resources.files("agent").joinpath("data", "fsfreeze-hook")))


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    """The hook as installed, with an empty fsfreeze-hook.d beside it."""
    installed = tmp_path / "qemu" / "fsfreeze-hook"
    installed.parent.mkdir()
    shutil.copy2(HOOK, installed)
    (installed.parent / "fsfreeze-hook.d").mkdir()
    return installed


def add_script(hook: Path, name: str, body: str = "", executable: bool = True) -> Path:
    """A script in the hook directory that notes "NAME ACTION" in the test's record."""
    record = hook.parent / "record"
    script = hook.parent / "fsfreeze-hook.d" / name
    script.write_text(f'#!/bin/sh\necho "{name} $1" >> "{record}"\necho "{name} says $1"\n{body}\n')
    script.chmod(0o755 if executable else 0o644)
    return script


def record(hook: Path) -> list[str]:
    path = hook.parent / "record"
    return path.read_text().splitlines() if path.exists() else []


def run(script: Path, action: str) -> subprocess.CompletedProcess[str]:
    """``script`` (a hook) run with ``action``, its log beside it."""
    log = script.parent / "hook.log"
    return subprocess.run(
        [str(script), action],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "FSFREEZE_HOOK_LOG": str(log)},
    )


def test_runs_each_executable_in_name_order_with_the_action(hook: Path) -> None:
    add_script(hook, "20-db")
    add_script(hook, "10 web")  # a blank in the name
    add_script(hook, "30-off", executable=False)
    for leftover in ("40-x.dpkg-old", "50-y~", "60-z.rpmsave", "70-w.bak"):
        add_script(hook, leftover)
    assert run(hook, "freeze").returncode == 0
    assert run(hook, "thaw").returncode == 0
    assert record(hook) == ["10 web freeze", "20-db freeze", "10 web thaw", "20-db thaw"]


def test_the_scripts_output_goes_to_the_log(hook: Path) -> None:
    add_script(hook, "10-db")
    result = run(hook, "freeze")
    assert result.stdout == ""
    log = (hook.parent / "hook.log").read_text()
    assert "10-db says freeze" in log
    assert "10-db finished with status=0" in log


def test_no_hook_directory_is_nothing_to_do(hook: Path) -> None:
    (hook.parent / "fsfreeze-hook.d").rmdir()
    assert run(hook, "freeze").returncode == 0


def test_a_failed_freeze_thaws_those_that_froze_in_reverse_and_fails(hook: Path) -> None:
    add_script(hook, "10-a")
    add_script(hook, "20-b")
    add_script(hook, "30-fails", "exit 3")
    add_script(hook, "40-never")
    result = run(hook, "freeze")
    assert result.returncode == 1
    assert "30-fails freeze failed" in result.stdout
    assert record(hook) == [
        "10-a freeze",
        "20-b freeze",
        "30-fails freeze",
        "20-b thaw",
        "10-a thaw",
    ]


def test_thaw_runs_every_script_and_fails_if_one_did(hook: Path) -> None:
    add_script(hook, "10-fails", "exit 1")
    add_script(hook, "20-b")
    result = run(hook, "thaw")
    assert result.returncode == 1
    assert "10-fails" in result.stdout
    assert record(hook) == ["10-fails thaw", "20-b thaw"]


def test_an_unknown_action_is_refused(hook: Path) -> None:
    result = run(hook, "frobnicate")
    assert result.returncode == 2
    assert "usage" in result.stderr


QEMU_GA_HOOK = Path("/etc/qemu/fsfreeze-hook")  # qemu-guest-agent's, the reference


def qemu_ga_s_hook(beside: Path) -> Path:
    """qemu-ga's hook, copied beside ours with its log in the test's directory."""
    if not QEMU_GA_HOOK.is_file():
        message = f"no {QEMU_GA_HOOK}: scripts/setup --test installs qemu-guest-agent"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    text = QEMU_GA_HOOK.read_text()
    line = "LOGFILE=/var/log/qga-fsfreeze-hook.log"
    assert f"\n{line}\n" in text
    copy = beside / "qemu-ga-fsfreeze-hook"
    copy.write_text(text.replace(line, f"LOGFILE={beside / 'hook.log'}"))
    copy.chmod(0o755)
    return copy


def test_scripts_written_for_qemu_ga_run_as_qemu_ga_s_hook_runs_them(hook: Path) -> None:
    """The same directory: the same scripts, in the same order, the same log lines."""
    add_script(hook, "20-db")
    add_script(hook, "10 web")
    add_script(hook, "30-off", executable=False)
    add_script(hook, "40-x.dpkg-old")
    reference = qemu_ga_s_hook(hook.parent)
    log = hook.parent / "hook.log"
    ran: dict[Path, list[str]] = {}
    logged: dict[Path, list[str]] = {}
    for script in (hook, reference):
        (hook.parent / "record").unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        for action in ("freeze", "thaw"):
            assert run(script, action).returncode == 0
        ran[script] = record(hook)
        # The log's lines without their dates: what a log watcher sees.
        logged[script] = [line.split(": ", 1)[-1] for line in log.read_text().splitlines()]
    assert ran[hook] == ["10 web freeze", "20-db freeze", "10 web thaw", "20-db thaw"]
    assert ran[hook] == ran[reference]
    assert logged[hook] == logged[reference]


async def test_the_agent_reports_which_script_failed(
    hook: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the agent's own runner, as a freeze runs it: the host sees why."""
    monkeypatch.setenv("FSFREEZE_HOOK_LOG", str(hook.parent / "hook.log"))
    add_script(hook, "10-db", "exit 4")
    with pytest.raises(GenericError, match=r"status 1: .*10-db freeze failed"):
        await run_hook(str(hook), "freeze")
