"""The packaging VM test's guest steps (``tests/support/vm_package_guest.py``), for
the parts that change nothing on this machine: the upgrade package it makes and
its refusal of a wrong call. The steps that install run in a VM only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import vm_package_guest as guest


def make_deb(tmp_path: Path, version: str) -> Path:
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share/doc/example").mkdir(parents=True)
    (tree / "usr/share/doc/example/README").write_text("example\n")
    (tree / "DEBIAN/control").write_text(
        f"Package: example\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: Nobody <nobody@example.org>\nDescription: example\n"
    )
    deb = tmp_path / "example.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return deb


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, timeout=60
    ).stdout.strip()


def test_deb_next_is_the_same_package_one_revision_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deb = make_deb(tmp_path, "0.1.0-1")
    out = tmp_path / "next.deb"
    assert guest.main(["deb-next", str(deb), str(out)]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report == {"ok": True, "step": "deb-next", "version": "0.1.0-2", "deb": str(out)}
    assert field(out, "Version") == "0.1.0-2"
    assert field(out, "Package") == "example"
    subprocess.run(
        ["dpkg", "--compare-versions", "0.1.0-2", "gt", field(deb, "Version")], check=True
    )


def test_a_step_called_wrongly_is_refused_with_the_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert guest.main(["scratch", "/dev/vdb"]) == 2
    assert "scratch DEVICE MOUNTPOINT" in capsys.readouterr().err
    assert guest.main(["no-such-step"]) == 2
    assert guest.main([]) == 2
