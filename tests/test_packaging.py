"""What the wheel and the Debian package are made of, held to the code: the man
page, the example configuration, the versions, the udev rule and the units.
Building them is ``tests/test_packaging_build.py`` (slow); the maintainer
scripts are ``tests/test_maintainer_scripts.py``'s."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
