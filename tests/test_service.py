"""trio-qga-service (``agent/daemon/service.py``, ``agent/daemon/thaw.py``): the unit,
udev rule and files of a pip or pipx install, put under a scratch root and taken
away again; and the wait for a thaw before the agent is restarted or stopped."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.daemon import service, thaw
from agent.system.fsfreeze.marker import FrozenMarker

EXEC = Path("/opt/venvs/trio-qga/bin/trio-qga")


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` and its content (None: a directory)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def install(root: Path, *options: str) -> int:
    return service.main(["install", "--root", str(root), "--exec", str(EXEC), *options])


def remove(root: Path) -> int:
    return service.main(["remove", "--root", str(root)])


def test_install_writes_every_file_and_remove_puts_the_root_back(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()  # what was there stays
    before = tree(tmp_path)
    assert install(tmp_path) == 0
    for placed in service.FILES:
        path = tmp_path / placed.target
        assert path.stat().st_mode & 0o777 == placed.mode, placed.target
    assert (tmp_path / service.HOOK_DIR).is_dir()
    unit = (tmp_path / "etc/systemd/system/trio-qga.service").read_text()
    assert f"\nExecStart={EXEC}\n" in unit
    rule = (tmp_path / "etc/udev/rules.d/60-trio-qga.rules").read_text()
    assert 'ENV{SYSTEMD_WANTS}="trio-qga.service"' in rule
    assert remove(tmp_path) == 0
    assert tree(tmp_path) == before


def test_install_twice_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install(tmp_path) == 0
    first = tree(tmp_path)
    capsys.readouterr()
    assert install(tmp_path) == 0
    assert tree(tmp_path) == first
    assert capsys.readouterr().out == "everything in place already\n"


def test_remove_twice_and_remove_before_install(tmp_path: Path) -> None:
    assert remove(tmp_path) == 0
    assert install(tmp_path) == 0
    assert remove(tmp_path) == 0
    assert remove(tmp_path) == 0
    assert tree(tmp_path) == {}


def test_existing_configuration_is_kept_on_install_and_on_remove(tmp_path: Path) -> None:
    """qemu-ga's hook and a qemu-ga.conf written for it are the administrator's."""
    qemu = tmp_path / "etc/qemu"
    (qemu / "fsfreeze-hook.d").mkdir(parents=True)
    (qemu / "fsfreeze-hook").write_text("#!/bin/sh\n# qemu-ga's\n")
    (qemu / "qemu-ga.conf").write_text("[general]\nverbose=true\n")
    (qemu / "fsfreeze-hook.d/10-db").write_text("#!/bin/sh\n")
    before = tree(tmp_path)
    assert install(tmp_path) == 0
    assert (qemu / "fsfreeze-hook").read_text() == "#!/bin/sh\n# qemu-ga's\n"
    assert (qemu / "qemu-ga.conf").read_text() == "[general]\nverbose=true\n"
    assert remove(tmp_path) == 0
    assert tree(tmp_path) == before


def test_a_configuration_like_ours_written_before_is_not_taken_over(tmp_path: Path) -> None:
    """The Debian package's postinst writes the same qemu-ga.conf, and keeps it
    after the package is removed: a pip install's remove leaves it there (seen
    in the packaging VM test, swapping the package for the wheel)."""
    conf = tmp_path / "etc/qemu/qemu-ga.conf"
    conf.parent.mkdir(parents=True)
    conf.write_bytes(service.data("qemu-ga.conf"))
    assert install(tmp_path) == 0
    assert install(tmp_path) == 0
    assert remove(tmp_path) == 0
    assert conf.read_bytes() == service.data("qemu-ga.conf")


def test_a_file_changed_since_install_is_kept_on_remove(tmp_path: Path) -> None:
    assert install(tmp_path) == 0
    conf = tmp_path / "etc/qemu/qemu-ga.conf"
    conf.write_text(conf.read_text() + "verbose=true\n")
    hook = tmp_path / service.HOOK_DIR / "10-db"
    hook.write_text("#!/bin/sh\n")
    assert remove(tmp_path) == 0
    assert conf.read_text().endswith("verbose=true\n")
    assert hook.exists()
    assert not (tmp_path / "etc/systemd/system/trio-qga.service").exists()
    assert not (tmp_path / service.MANIFEST).exists()


def test_a_unit_written_by_someone_else_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = tmp_path / "etc/systemd/system/trio-qga.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/local/bin/trio-qga\n")
    assert install(tmp_path) == 1
    assert "--force replaces it" in capsys.readouterr().err
    assert unit.read_text() == "[Service]\nExecStart=/usr/local/bin/trio-qga\n"
    assert install(tmp_path, "--force") == 0
    assert f"ExecStart={EXEC}" in unit.read_text()
    assert remove(tmp_path) == 0
    assert not unit.exists()


def test_an_upgrade_replaces_the_files_it_wrote(tmp_path: Path) -> None:
    """A newer version's unit replaces the older one's, which the manifest knows."""
    assert install(tmp_path) == 0
    unit = tmp_path / "etc/systemd/system/trio-qga.service"
    old = b"[Service]\nExecStart=/old/trio-qga\n"
    unit.write_bytes(old)
    manifest = tmp_path / service.MANIFEST
    record = json.loads(manifest.read_text())
    record["files"]["etc/systemd/system/trio-qga.service"] = service.digest(old)
    manifest.write_text(json.dumps(record))
    assert install(tmp_path) == 0
    assert f"ExecStart={EXEC}" in unit.read_text()


def test_the_units_are_the_packaged_ones_but_for_exec_start(tmp_path: Path) -> None:
    assert install(tmp_path) == 0
    for name in (service.UNIT, *service.OPTIONAL_UNITS):
        packaged = service.data(name).decode()
        written = (tmp_path / "etc/systemd/system" / name).read_text()
        if name.endswith(".service"):
            assert service.PACKAGED_EXEC in packaged
            packaged = packaged.replace(service.PACKAGED_EXEC, f"ExecStart={EXEC}")
        assert written == packaged


def test_the_default_exec_is_the_trio_qga_beside_this_command() -> None:
    found = service.default_exec()
    assert found.name == "trio-qga"
    assert found.is_absolute()
    assert os.access(found, os.X_OK)


def test_a_relative_exec_is_refused(tmp_path: Path) -> None:
    assert service.main(["install", "--root", str(tmp_path), "--exec", "bin/trio-qga"]) == 1
    assert not (tmp_path / "etc").exists()


class Recorder:
    """systemctl and udevadm as the service command would run them."""

    def __init__(self, active: bool = True) -> None:
        self.calls: list[list[str]] = []
        self.active = active

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(list(argv))
        if argv[:3] == ["systemctl", "--quiet", "is-active"]:
            return 0 if self.active else 3
        return 0


def test_install_on_the_live_system_reloads_and_replays_the_port(tmp_path: Path) -> None:
    recorder = Recorder(active=False)
    system = service.System(live=True, run=recorder)
    args = service.build_parser().parse_args(
        ["install", "--root", str(tmp_path), "--exec", str(EXEC)]
    )
    assert service.install(args, system) == 0
    assert recorder.calls[:2] == [
        ["systemctl", "daemon-reload"],
        ["udevadm", "control", "--reload-rules"],
    ]
    trigger = recorder.calls[2]
    assert trigger[:3] == ["udevadm", "trigger", "--action=add"]
    assert "--attr-match=name=org.qemu.guest_agent.0" in trigger


def test_a_scratch_root_runs_neither_systemctl_nor_udevadm(tmp_path: Path) -> None:
    recorder = Recorder()
    assert service.main(["install", "--root", str(tmp_path)], runner=recorder) == 0
    assert service.main(["remove", "--root", str(tmp_path)], runner=recorder) == 0
    assert recorder.calls == []


@pytest.fixture
def statedir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    return state


def freeze_marker(state: Path, mountpoints: list[str]) -> None:
    FrozenMarker(str(state)).write(mountpoints)


def test_wait_thawed_returns_once_the_marker_goes(statedir: Path) -> None:
    freeze_marker(statedir, ["/data"])
    now = [0.0]
    said: list[str] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 3:  # the host thaws after 3 s
            FrozenMarker(str(statedir)).remove()

    still = thaw.wait_thawed(str(statedir), 10, clock=lambda: now[0], sleep=sleep, say=said.append)
    assert still is None
    assert 3 <= now[0] < 10
    assert len(said) == 1
    assert "/data frozen since" in said[0]


def test_wait_thawed_gives_up_after_its_bound(statedir: Path) -> None:
    freeze_marker(statedir, ["/data", "/srv"])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    still = thaw.wait_thawed(str(statedir), 5, clock=lambda: now[0], sleep=sleep, say=print)
    assert still is not None
    assert still.mountpoints == ["/data", "/srv"]
    assert now[0] == 5


def test_qemu_ga_s_empty_marker_counts_too(statedir: Path) -> None:
    (statedir / "qga.state.isfrozen").write_bytes(b"")
    found = thaw.frozen(str(statedir))
    assert found is not None
    assert found.mountpoints is None
    assert "filesystems frozen since" in found.describe()


def test_the_state_directory_comes_from_the_configuration_file(tmp_path: Path) -> None:
    conf = tmp_path / "qemu-ga.conf"
    conf.write_text("[general]\nstatedir=/var/lib/qga\n")
    assert thaw.statedir(str(conf)) == "/var/lib/qga"
    conf.write_text("[general]\nverbose=true\n")
    assert thaw.statedir(str(conf)) == "/var/run"  # qemu-ga's default


def test_wait_thawed_command_refuses_while_frozen(
    statedir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "qemu-ga.conf"
    conf.write_text(f"[general]\nstatedir={statedir}\n")
    assert service.main(["wait-thawed", "-c", str(conf), "--timeout", "0.2"]) == 0
    freeze_marker(statedir, ["/data"])
    assert service.main(["wait-thawed", "-c", str(conf), "--timeout", "0.2"]) == 1
    err = capsys.readouterr().err
    assert "/data frozen since" in err
    assert "still after 0.2 s" in err
    assert "try again" in err


def test_wait_thawed_if_running_asks_only_a_running_agent(statedir: Path) -> None:
    freeze_marker(statedir, ["/data"])
    args = ["wait-thawed", "-t", str(statedir), "--timeout", "0.2", "--if-running"]
    parsed = service.build_parser().parse_args(args)
    stopped = service.System(live=True, run=Recorder(active=False))
    assert service.wait_thawed(parsed, stopped) == 0
    with pytest.raises(service.Refused, match="frozen"):
        service.wait_thawed(parsed, service.System(live=True, run=Recorder(active=True)))


def test_restart_waits_for_the_thaw_then_restarts(statedir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "qemu-ga.conf"
    conf.write_text(f"[general]\nstatedir={statedir}\n")
    args = service.build_parser().parse_args(["restart", "-c", str(conf), "--timeout", "0.2"])
    recorder = Recorder()
    system = service.System(live=True, run=recorder)
    freeze_marker(statedir, ["/data"])
    with pytest.raises(service.Refused):
        service.restart(args, system)
    restart = ["systemctl", "try-restart", *service.AGENTS]
    assert restart not in recorder.calls
    FrozenMarker(str(statedir)).remove()
    assert service.restart(args, system) == 0
    assert recorder.calls[-1] == restart


def test_restart_of_a_stopped_agent_does_nothing() -> None:
    recorder = Recorder(active=False)
    args = service.build_parser().parse_args(["restart"])
    assert service.restart(args, service.System(live=True, run=recorder)) == 0
    assert all(call[:3] == ["systemctl", "--quiet", "is-active"] for call in recorder.calls)
