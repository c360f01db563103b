"""The release artifacts, built once per test session as a release builds them:
``scripts/build-deb`` (``python -m build``, then the .deb, then lintian) into a
temporary directory. ``tests/test_packaging_build.py`` checks them and
``tests/test_vm_package.py`` installs them in a VM: one build (about a minute)
serves both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.version import VERSION

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 1500  # seconds: PyPI downloads, compiling, xz and lintian on a busy host


@dataclass(frozen=True)
class Release:
    wheel: Path
    sdist: Path
    deb: Path
    log: str  # what scripts/build-deb printed


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    missing = [tool for tool in ("dpkg-buildpackage", "dh", "lintian") if not shutil.which(tool)]
    if missing or not Path("/usr/bin/python3.11").exists():
        message = f"scripts/setup --test installs what build-deb needs: missing {missing}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-deb"), "--outdir", str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (deb,) = out.glob("trio-qga_*.deb")
    return Release(
        wheel=out / f"trio_qga-{VERSION}-py3-none-any.whl",
        sdist=out / f"trio_qga-{VERSION}.tar.gz",
        deb=deb,
        log=result.stdout + result.stderr,
    )
