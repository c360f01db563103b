"""The FIFREEZE safety net of ``agent/system/fsfreeze/ioctl.py``: only listed
mountpoints off the root device may be frozen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.system.fsfreeze.ioctl import ALLOW_ENV, REFUSED_ENV, check_allowed


def test_guard_allows_only_listed_mountpoints_off_the_root_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = tmp_path / "refused"
    monkeypatch.setenv(REFUSED_ENV, str(refused))  # not the suite's: no failure
    root_device = os.stat("/").st_dev
    other_device = root_device + 1
    monkeypatch.setenv(ALLOW_ENV, f"/proc{os.pathsep}{tmp_path}{os.pathsep}/")
    check_allowed("/proc", other_device)  # listed, a mountpoint, not the root device
    with pytest.raises(PermissionError, match="refused"):
        check_allowed(str(tmp_path), other_device)  # listed, but not a mountpoint
    with pytest.raises(PermissionError, match="refused"):
        check_allowed("/", root_device)  # listed, but the root filesystem
    with pytest.raises(PermissionError, match="refused"):
        check_allowed("/sys", other_device)  # not listed
    assert refused.read_text().split() == [str(tmp_path), "/", "/sys"]
    monkeypatch.delenv(ALLOW_ENV)
    check_allowed("/sys", other_device)  # no list: no guard
