"""The release artifacts, built as a release builds them (``scripts/build-deb``:
``python -m build``, then the .deb, then lintian; the session's ``release``
fixture, ``tests/support/release.py``), and what they hold: twine's check, a
clean venv from the wheel, the .deb's files, fields and bytecode. Installing the
.deb is ``tests/test_vm_package.py``'s, in a VM: here nothing is installed."""

from __future__ import annotations

import json
import marshal
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent.version import VERSION
from tests.support.clients import SocketClient
from tests.support.processes import stop, wait_for_socket
from tests.support.release import Release

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tree(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb unpacked (dpkg-deb -R)."""
    unpacked = tmp_path_factory.mktemp("deb") / "tree"
    subprocess.run(["dpkg-deb", "-R", str(release.deb), str(unpacked)], check=True, timeout=120)
    return unpacked


def test_build_deb_makes_the_three_artifacts_and_lintian_passes(release: Release) -> None:
    assert release.wheel.is_file()
    assert release.sdist.is_file()
    assert re.fullmatch(rf"trio-qga_{re.escape(VERSION)}-\d+_\w+\.deb", release.deb.name)
    assert "build-deb: lintian" in release.log  # and it exited 0: --fail-on error,warning


def test_twine_check_passes(release: Release) -> None:
    twine = Path(sys.executable).parent / "twine"
    result = subprocess.run(
        [str(twine), "check", "--strict", str(release.wheel), str(release.sdist)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_holds_the_data_files_and_its_metadata(release: Release) -> None:
    with zipfile.ZipFile(release.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"trio_qga-{VERSION}.dist-info/METADATA").decode()
    for name in (ROOT / "agent" / "data").iterdir():
        assert f"agent/data/{name.name}" in names
    assert "License-Expression: GPL-2.0-or-later" in metadata
    assert "Project-URL: Source," in metadata
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for host_only in ("rich", "libvirt-python"):
        assert all("extra ==" in line for line in requires if host_only in line), (
            f"{host_only} must be an extra's"
        )


def test_the_sdist_is_the_whole_source(release: Release) -> None:
    with tarfile.open(release.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for path in ("debian/rules", "scripts/build-deb", "docs/packaging.md", "LICENSE"):
        assert path in names


def test_a_clean_venv_from_the_wheel_gets_a_working_agent_and_no_host_extras(
    release: Release, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(release.wheel)],
        check=True,
        timeout=600,
    )
    listed = subprocess.run(
        [str(venv / "bin/pip"), "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.lower()
    assert "trio-qga==" in listed
    assert "rich==" not in listed
    assert "libvirt" not in listed
    help_text = subprocess.run(
        [str(venv / "bin/trio-qga"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0
    assert "--fsfreeze-hook" in help_text.stdout
    version = subprocess.run(
        [str(venv / "bin/trio-qga"), "-V"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.strip() == f"trio-qga {VERSION} (QEMU guest agent protocol)"
    served_from_the_venv(venv, tmp_path / "run")
    service = subprocess.run(
        [str(venv / "bin/trio-qga-service"), "install", "--root", str(tmp_path / "root")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert service.returncode == 0, service.stderr
    unit = (tmp_path / "root/etc/systemd/system/trio-qga.service").read_text()
    assert f"ExecStart={venv}/bin/trio-qga\n" in unit


def served_from_the_venv(venv: Path, workdir: Path) -> None:
    """The venv's trio-qga, not this checkout's (no PYTHONPATH, another working
    directory), answers on a unix socket: the schema's data files came with it."""
    workdir.mkdir()
    sock = workdir / "qga.sock"
    command = [str(venv / "bin/trio-qga"), "-t", str(workdir), "--cache-dir", str(workdir)]
    env = {"PATH": "/usr/bin:/bin"}
    schema = subprocess.run(
        [*command, "--dump-schema"], capture_output=True, text=True, timeout=60, env=env
    )
    assert schema.returncode == 0, schema.stderr
    assert "guest-file-open" in json.loads(schema.stdout)
    agent = subprocess.Popen(
        [*command, "--transport", f"unix-listen:{sock}"],
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=env,
    )
    try:
        wait_for_socket(sock, agent)
        client = SocketClient(sock)
        try:
            assert client.execute("guest-ping") == {"return": {}}
            info = client.execute("guest-info")["return"]
            assert info["version"] == VERSION
        finally:
            client.close()
    finally:
        assert stop(agent) == 0


def test_the_deb_stands_in_for_qemu_guest_agent(tree: Path) -> None:
    control = (tree / "DEBIAN/control").read_text()
    for field in ("Provides", "Conflicts", "Replaces"):
        assert f"\n{field}: qemu-guest-agent\n" in control
    assert re.search(r"\nDepends: python3\.11,", control)
    assert f"\nVersion: {VERSION}-" in control
    assert (tree / "DEBIAN/conffiles").read_text().split() == ["/etc/qemu/fsfreeze-hook"]


def test_the_deb_holds_the_agent_and_what_starts_it(tree: Path) -> None:
    for path in (
        "lib/systemd/system/trio-qga.service",
        "lib/systemd/system/trio-qga-vsock.socket",
        "lib/systemd/system/trio-qga-vsock.service",
        "lib/systemd/system/trio-qga-multi.service",
        "lib/udev/rules.d/60-trio-qga.rules",
        "etc/qemu/fsfreeze-hook",
        "usr/share/trio-qga/qemu-ga.conf",
        "usr/share/man/man8/trio-qga.8.gz",
        "usr/lib/trio-qga/bin/trio-qga-service",
    ):
        assert (tree / path).is_file(), path
    assert (tree / "etc/qemu/fsfreeze-hook.d").is_dir()
    assert not (tree / "etc/qemu/qemu-ga.conf").exists()  # postinst's, not a conffile
    assert os.readlink(tree / "usr/sbin/trio-qga") == "../lib/trio-qga/bin/trio-qga"
    assert os.readlink(tree / "usr/lib/trio-qga/bin/python3.11") == "../../../bin/python3.11"
    assert (
        (tree / "usr/lib/trio-qga/bin/trio-qga")
        .read_text()
        .startswith("#!/usr/lib/trio-qga/bin/python3.11\n")
    )
    for unit in (ROOT / "agent/data").glob("trio-qga*.s*"):  # .service, .socket: as they are
        assert (tree / "lib/systemd/system" / unit.name).read_text() == unit.read_text()


def test_the_deb_s_environment_has_no_build_tools_nor_build_paths(tree: Path) -> None:
    venv = tree / "usr/lib/trio-qga"
    site = venv / "lib/python3.11/site-packages"
    assert not list(site.glob("pip*"))
    assert not list(site.glob("setuptools*"))
    assert not list(venv.glob("bin/activate*"))
    assert not list(site.glob("*.dist-info/direct_url.json"))
    assert "command" not in (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()


def test_the_deb_s_bytecode_is_compiled_for_the_installed_paths(tree: Path) -> None:
    """Every module has its bytecode, hash-based and unchecked: nothing is compiled
    or written at start, and no mtime clamped by dpkg-deb matters."""
    site = tree / "usr/lib/trio-qga/lib/python3.11/site-packages"
    sources = list((site / "agent").rglob("*.py"))
    assert sources
    for source in sources:
        (pyc,) = (source.parent / "__pycache__").glob(f"{source.stem}.cpython-311.pyc")
        data = pyc.read_bytes()
        assert int.from_bytes(data[4:8], "little") == 0b01, pyc  # hash-based, unchecked
        code = marshal.loads(data[16:])
        assert code.co_filename == "/" + str(source.relative_to(tree)), pyc


def test_every_bundled_distribution_is_in_debian_copyright(tree: Path) -> None:
    copyright_text = (ROOT / "debian/copyright").read_text()
    site = tree / "usr/lib/trio-qga/lib/python3.11/site-packages"
    for info in site.glob("*.dist-info"):
        name = info.name.removesuffix(".dist-info").rsplit("-", 1)[0]
        if name == "trio_qga":
            continue
        pattern = f"site-packages/{name}-*.dist-info/*"
        assert pattern in copyright_text, f"debian/copyright does not name {name}"


def test_the_maintainer_scripts_are_ours_with_debhelper_s(tree: Path) -> None:
    scripts = tree / "DEBIAN"
    for name in ("preinst", "postinst", "prerm"):
        text = (scripts / name).read_text()
        assert "wait-thawed --if-running" in text, name
        assert "#DEBHELPER#" not in text
    prerm = (scripts / "prerm").read_text()
    assert "deb-systemd-invoke stop" in prerm
    # debhelper neither stops the agent before an upgrade nor restarts it unguarded.
    assert "deb-systemd-invoke stop" not in (scripts / "preinst").read_text()
    postinst = (scripts / "postinst").read_text()
    commands = [line for line in postinst.splitlines() if not line.lstrip().startswith("#")]
    assert sum("deb-systemd-invoke" in line for line in commands) == 1
