"""A real guest user for one test, with a home under the test's temporary directory,
and a root-only file standing in for /etc/shadow.

The user is made with ``useradd`` (the agent finds it through NSS, as it finds
real users) and removed with ``userdel`` in teardown. Needs root; skips with the
reason where it is not root or ``useradd`` is missing.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# useradd/userdel exit statuses that mean another process holds /etc/passwd or /etc/group.
_BUSY = (1, 10)


@dataclass(frozen=True)
class ScratchUser:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def ssh_dir(self) -> Path:
        return self.home / ".ssh"

    @property
    def keys_file(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    def make_ssh_dir(self) -> Path:
        """``~/.ssh`` as the user would make it: 0700, theirs."""
        self.ssh_dir.mkdir(mode=0o700)
        os.chown(self.ssh_dir, self.uid, self.gid)
        return self.ssh_dir

    def plant(self, path: Path) -> Path:
        """Make ``path`` (a file, FIFO, link...) the user's, as if they made it."""
        os.lchown(path, self.uid, self.gid)
        return path


def _run_retrying(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv``, tried again while another process (another test run) holds the
    account files' locks."""
    for _ in range(40):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode not in _BUSY or "lock" not in done.stderr:
            return done
        time.sleep(0.25)
    return done


def _needs(program: str) -> str:
    if os.geteuid() != 0:
        pytest.skip(f"creating a scratch user with {program} needs root (CI runs as root)")
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is not installed (package passwd): no scratch user")
    return found


@pytest.fixture
def scratch_user(tmp_path: Path) -> Iterator[ScratchUser]:
    """A new user, its home ``tmp_path/home`` made by useradd and owned by it."""
    useradd, userdel = _needs("useradd"), _needs("userdel")
    name = f"qga{secrets.token_hex(4)}"
    home = tmp_path / "home"
    options = ["--create-home", "--home-dir", str(home), "--user-group"]
    made = _run_retrying([useradd, *options, "--shell", "/usr/sbin/nologin", name])
    if made.returncode:
        pytest.fail(f"useradd {name} failed ({made.returncode}): {made.stderr.strip()}")
    try:
        entry = pwd.getpwnam(name)
        yield ScratchUser(name, entry.pw_uid, entry.pw_gid, home)
    finally:
        removed = _run_retrying([userdel, name])
        if removed.returncode:
            pytest.fail(f"userdel {name} failed ({removed.returncode}): {removed.stderr.strip()}")


@dataclass(frozen=True)
class RootOnly:
    """A file only root may read, standing in for /etc/shadow, and a root-owned
    directory holding one, standing in for /root/.ssh."""

    file: Path
    directory: Path
    content: bytes

    def snapshot(self) -> list[tuple[str, int, int, int, bytes]]:
        """Everything about them that must never change: names, owners, modes, bytes."""
        items = [self.file, self.directory, *sorted(self.directory.iterdir())]
        return [
            (str(item), (st := item.lstat()).st_uid, st.st_mode, st.st_nlink, _bytes(item))
            for item in items
        ]


def _bytes(path: Path) -> bytes:
    return path.read_bytes() if path.is_file() and not path.is_symlink() else b""


@pytest.fixture
def root_only(tmp_path: Path) -> RootOnly:
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    content = f"root:$6$ROOT-ONLY-{secrets.token_hex(8)}:19000:0:99999:7:::\n".encode()
    shadow = vault / "shadow"
    shadow.write_bytes(content)
    shadow.chmod(0o600)
    directory = tmp_path / "root-ssh"
    directory.mkdir(mode=0o700)
    (directory / "authorized_keys").write_bytes(content)
    (directory / "authorized_keys").chmod(0o600)
    return RootOnly(shadow, directory, content)


def files_holding(top: Path, content: bytes, but: Path | None = None) -> list[Path]:
    """Every regular file under ``top`` (links not followed) that holds ``content``,
    leaving out ``but``'s own inode (a hard link the test planted)."""
    skip = None
    if but is not None:
        status = but.lstat()
        skip = (status.st_dev, status.st_ino)
    found = []
    for directory, _, names in os.walk(top):
        for name in names:
            path = Path(directory, name)
            status = path.lstat()
            if (
                stat.S_ISREG(status.st_mode)
                and (status.st_dev, status.st_ino) != skip
                and content.strip() in path.read_bytes()
            ):
                found.append(path)
    return found
