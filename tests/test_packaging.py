"""What the wheel and the Debian package are made of, held to the code: the man
page, the example configuration, the versions, the udev rule and the units, and
the maintainer scripts' decisions (run against a stand-in trio-qga-service and
systemctl, in a mount namespace of their own). Building them is
``tests/test_packaging_build.py`` (slow)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from agent.daemon import conffile, manpage, service
from agent.daemon.options import build_parser
from agent.version import VERSION

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "agent" / "data"
DEBIAN = ROOT / "debian"


def test_the_man_page_is_the_one_the_options_make() -> None:
    """Regenerate it with: python -m agent.daemon.manpage agent/data/trio-qga.8"""
    assert (DATA / "trio-qga.8").read_text() == manpage.render()


def test_the_man_page_has_every_option_and_its_help() -> None:
    page = manpage.render()
    for action in build_parser()._actions:
        for option in action.option_strings:
            if action.help != "==SUPPRESS==":
                escaped = option.replace("-", "\\-")
                assert f"\\fB{escaped}\\fR" in page, option


def test_the_man_page_says_what_roff_would_misread_literally() -> None:
    assert manpage._text(".start") == "\\&.start"
    assert manpage._text("a-b\\c") == "a\\-b\\ec"


def test_the_example_configuration_names_every_key_once() -> None:
    lines = (DATA / "qemu-ga.conf").read_text().splitlines()
    keys = [line[1:].split("=")[0] for line in lines if re.match(r"#[a-z-]+=", line)]
    assert sorted(keys) == sorted(key.name for key in conffile.KEYS)


def test_the_example_configuration_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = (DATA / "qemu-ga.conf").read_text()
    conf = tmp_path / "qemu-ga.conf"
    conf.write_text(re.sub(r"(?m)^#([a-z-]+=)", r"\1", text))
    settings = conffile.load(str(conf), required=True)
    assert len(settings) == len(conffile.KEYS)
    assert settings["statedir"] == "/var/run"
    assert settings["method"] == "virtio-serial"


def test_versions_follow_the_project() -> None:
    """debian/changelog's top entry is this version's (pyproject reads agent/version.py)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "agent.version.VERSION"
    }
    top = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"trio-qga \(([^)-]+)-(\d+)\) \S+; urgency=\w+", top)
    assert match is not None, top
    assert match.group(1) == VERSION


def test_the_package_data_holds_what_is_installed() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "data/*" in pyproject["tool"]["setuptools"]["package-data"]["agent"]
    names = {path.name for path in DATA.iterdir()}
    assert {placed.source for placed in service.FILES} <= names
    rules = (DEBIAN / "rules").read_text()
    for name in names - {"trio-qga.8"}:  # the man page: debian/trio-qga.manpages
        assert f"agent/data/{name}" in rules, name
    assert (DEBIAN / "trio-qga.manpages").read_text().strip() == "agent/data/trio-qga.8"


def test_the_udev_rule_starts_the_unit_bound_to_the_port() -> None:
    rule = (DATA / "60-trio-qga.rules").read_text()
    assert 'ATTR{name}=="org.qemu.guest_agent.0"' in rule
    assert 'ENV{SYSTEMD_WANTS}="trio-qga.service"' in rule
    unit = (DATA / "trio-qga.service").read_text()
    device = "dev-virtio\\x2dports-org.qemu.guest_agent.0.device"
    assert f"\nBindsTo={device}\n" in unit
    assert "\n[Install]" not in unit  # udev starts it, as qemu-guest-agent's
    assert f"\n{service.PACKAGED_EXEC}\n" in unit


def test_the_package_stands_in_for_qemu_guest_agent() -> None:
    control = (DEBIAN / "control").read_text()
    for field in ("Provides", "Conflicts", "Replaces"):
        assert f"\n{field}: qemu-guest-agent\n" in control


# The maintainer scripts, as they are in debian/ (dh_installdeb adds debhelper's
# snippets at #DEBHELPER#, a comment here), with stand-ins first on $PATH.
FAKE_SERVICE = """#!/bin/sh
echo "trio-qga-service $*" >> "$CALLS"
if [ -e "$FROZEN" ]; then echo "the agent reports /data frozen" >&2; exit 1; fi
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$CALLS"
case "$*" in *is-active*) [ -e "$ACTIVE" ];; esac
"""
RECORDING = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'


@pytest.fixture
def maintscript(tmp_path: Path) -> Path:
    """A directory with the stand-ins; its ``calls`` records what the scripts ran."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        message = "the maintainer scripts run as root, in a mount namespace (unshare)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {
        "trio-qga-service": FAKE_SERVICE,
        "systemctl": FAKE_SYSTEMCTL,
        "deb-systemd-invoke": RECORDING,
        "udevadm": RECORDING,
    }.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return tmp_path


def run_script(
    work: Path, name: str, *args: str, frozen: bool = False, active: bool = True, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """debian/trio-qga.NAME ARGS with systemd "running" (/run/systemd/system on a
    tmpfs of the namespace's own), and /etc/qemu and /var/lib too: the machine's
    stay as they are."""
    script = (DEBIAN / f"trio-qga.{name}").read_text()
    line = "SERVICE=/usr/lib/trio-qga/bin/trio-qga-service"
    assert script.count(f"\n{line}\n") == 1
    copy = work / name
    copy.write_text(script.replace(line, f"SERVICE={work}/bin/trio-qga-service"))
    (work / "calls").write_text("")
    for flag, wanted in (("frozen", frozen), ("active", active)):
        (work / flag).unlink(missing_ok=True)
        if wanted:
            (work / flag).touch()
    setup = (
        "mount -t tmpfs none /run && mkdir -p /run/systemd/system && "
        "mount -t tmpfs none /etc/qemu && echo '[general]' > /etc/qemu/qemu-ga.conf && "
        "mount -t tmpfs none /var/lib && "
        'exec sh "$@"'
    )
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            setup,
            "sh",
            str(copy),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": f"{work}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "CALLS": str(work / "calls"),
            "FROZEN": str(work / "frozen"),
            "ACTIVE": str(work / "active"),
            **env,
        },
    )
    return result, (work / "calls").read_text().splitlines()


WAIT = "trio-qga-service wait-thawed --if-running --timeout 60"
AGENTS = " ".join(service.AGENTS)


def test_postinst_restarts_a_running_agent_once_thawed(maintscript: Path) -> None:
    result, calls = run_script(maintscript, "postinst", "configure", "0.0.9-1")
    assert result.returncode == 0, result.stderr
    assert calls == [
        "systemctl --system daemon-reload",
        WAIT,
        f"deb-systemd-invoke try-restart {AGENTS}",
        "systemctl --quiet is-active trio-qga.service",
    ]


def test_postinst_refuses_to_restart_while_frozen(maintscript: Path) -> None:
    result, calls = run_script(maintscript, "postinst", "configure", "0.0.9-1", frozen=True)
    assert result.returncode == 1
    assert "the agent reports /data frozen" in result.stderr
    assert "dpkg --configure -a" in result.stderr
    assert not any("restart" in call for call in calls)


def test_the_wait_is_the_administrator_s_to_set(maintscript: Path) -> None:
    _, calls = run_script(maintscript, "postinst", "configure", "0.0.9-1", TRIO_QGA_THAW_WAIT="300")
    assert "trio-qga-service wait-thawed --if-running --timeout 300" in calls


def test_postinst_leaves_a_stopped_agent_to_udev(maintscript: Path) -> None:
    """No port here: nothing to start (with the port, udev replays its event)."""
    result, calls = run_script(maintscript, "postinst", "configure", "", active=False)
    assert result.returncode == 0, result.stderr
    assert not any("udevadm" in call for call in calls)
    assert calls[-1] == "systemctl --quiet is-active trio-qga.service"


def test_preinst_refuses_an_upgrade_while_frozen(maintscript: Path) -> None:
    # preinst asks the installed package's trio-qga-service (there is none here: its
    # path is the stand-in's).
    result, calls = run_script(maintscript, "preinst", "upgrade", "0.0.9-1", frozen=True)
    assert result.returncode == 1
    assert "nothing was changed" in result.stderr
    assert calls == [WAIT]
    result, calls = run_script(maintscript, "preinst", "upgrade", "0.0.9-1")
    assert result.returncode == 0
    result, calls = run_script(maintscript, "preinst", "install", frozen=True)
    assert result.returncode == 0
    assert calls == []


def test_prerm_refuses_a_removal_while_frozen(maintscript: Path) -> None:
    result, calls = run_script(maintscript, "prerm", "remove", frozen=True)
    assert result.returncode == 1
    assert "not removed" in result.stderr
    assert calls == [WAIT]
    result, calls = run_script(maintscript, "prerm", "remove")
    assert result.returncode == 0
    stop = f"deb-systemd-invoke stop {' '.join(service.OPTIONAL_UNITS)} trio-qga.service"
    assert calls == [WAIT, stop]
    result, calls = run_script(maintscript, "prerm", "upgrade", "0.2.0-1", frozen=True)
    assert result.returncode == 0  # the upgrade's own scripts wait
    assert calls == []
