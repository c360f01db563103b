"""Builds of trio-qga to benchmark, each installed by pip into a venv of its own.

A git revision is installed once and kept, by commit hash, under the cache
directory (``~/.cache/trio-qga-bench`` by default): later runs start at once.
The working tree is copied as it is at the start of the run (its tracked and
untracked files, less what git ignores) and installed into a venv kept for it,
installed again only when a file changed (its dependencies too only when a
``pyproject.toml`` did).
Both are installed the same way, as a guest installs the agent (not editable),
with the example plugins of ``plugins/`` as ``scripts/setup --test`` installs
them, so that the two builds differ in their code only.

An install that fails or is interrupted leaves nothing behind that a later run
would take for a build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trio-qga-bench"
READY = "ready"  # written last into a build's directory: the install is complete


class BuildError(RuntimeError):
    """A build that could not be made, with what git or pip said."""


@dataclass(frozen=True)
class Build:
    label: str  # what the build is, for the table's legend
    python: Path  # the interpreter it is installed for
    # Whether its trio-qga keeps a plugin record (``--cache-dir``): revisions
    # older than the record (22c6f4c, for one) refuse the option, and every
    # start of theirs is a first start.
    plugin_record: bool = True


def revision(rev: str, cache: Path = DEFAULT_CACHE) -> Build:
    """The build of the git revision ``rev``, installed on first use."""
    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", what=f"revision {rev!r}")
    home = cache / commit
    with _locked(cache, commit):
        if not (home / READY).exists():
            with tempfile.TemporaryDirectory(prefix="trio-qga-bench-") as tmp:
                source = Path(tmp)
                archive = _run(["git", "-C", str(ROOT), "archive", commit], what="git archive")
                with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                    tar.extractall(source, filter="data")
                _install(home, source, stamp=commit)
    python = home / "venv" / "bin" / "python"
    return Build(f"{rev} ({commit[:10]})", python, _keeps_plugin_record(python))


def working_tree(cache: Path = DEFAULT_CACHE) -> Build:
    """The build of the working tree as it is now, installed afresh."""
    key = hashlib.sha256(str(ROOT).encode()).hexdigest()[:16]
    home = cache / f"worktree-{key}"
    files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", what="git ls-files")
    with _locked(cache, home.name), tempfile.TemporaryDirectory(prefix="trio-qga-bench-") as tmp:
        source = Path(tmp)
        for name in files.split("\0"):
            path = ROOT / name
            if name and path.is_file():  # a tracked file deleted in the tree is gone
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, source / name)
        stamp, content = _stamp(source, "**/pyproject.toml"), _stamp(source, "**/*")
        installed = home / "installed"  # the stamp of the content installed last
        if not (home / READY).exists() or (home / READY).read_text() != stamp:
            _install(home, source, stamp=stamp)
        elif not installed.exists() or installed.read_text() != content:
            installed.unlink(missing_ok=True)
            _pip(home, "--no-deps", "--force-reinstall", *_projects(source))
        installed.write_text(content)
    head = git("rev-parse", "--short=10", "HEAD", what="HEAD")
    changed = git("status", "--porcelain", what="git status")
    python = home / "venv" / "bin" / "python"
    return Build(
        f"working tree (HEAD {head}{' + changes' if changed else ''})",
        python,
        _keeps_plugin_record(python),
    )


def git(*args: str, what: str) -> str:
    return _run(["git", "-C", str(ROOT), *args], what=what).decode().strip()


def _keeps_plugin_record(python: Path) -> bool:
    """Whether the trio-qga installed for ``python`` takes ``--cache-dir``.

    Asked from the venv's directory: ``-m`` puts the working directory first on
    the path, and from the project's root it would find the working tree's
    ``agent`` instead of the build's."""
    argv = [str(python), "-m", "agent", "--help"]
    usage = _run(argv, what=f"{python} -m agent --help", cwd=python.parent)
    return b"--cache-dir" in usage


def _install(home: Path, source: Path, *, stamp: str) -> None:
    """A venv in ``home`` with the projects of ``source`` and their dependencies;
    ``stamp`` marks it complete. Nothing is left of a half-made one."""
    shutil.rmtree(home, ignore_errors=True)
    try:
        _run([sys.executable, "-m", "venv", "--without-pip", str(home / "venv")], what="venv")
        _pip(home, *_projects(source))
        (home / READY).write_text(stamp)
    except BaseException:  # Ctrl-C included
        shutil.rmtree(home, ignore_errors=True)
        raise


def _pip(home: Path, *args: str) -> None:
    """pip of this interpreter, installing into ``home``'s venv (which has no pip)."""
    python = home / "venv" / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", *args],
        what=f"pip install into {home}",
    )


def _projects(source: Path) -> list[str]:
    """The project in ``source`` and its example plugins."""
    plugins = sorted(str(p.parent) for p in source.glob("plugins/*/pyproject.toml"))
    return [str(source), *plugins]


def _stamp(source: Path, pattern: str) -> str:
    """A digest of the files of ``source`` that match ``pattern``, names and content."""
    digest = hashlib.sha256()
    for path in sorted(source.glob(pattern)):
        if path.is_file():
            digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _run(argv: list[str], *, what: str, cwd: Path | None = None) -> bytes:
    result = subprocess.run(argv, capture_output=True, check=False, cwd=cwd)
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip().splitlines()[-15:]
        raise BuildError(f"{what} failed (status {result.returncode}):\n" + "\n".join(said))
    return result.stdout


@contextlib.contextmanager
def _locked(cache: Path, name: str) -> Iterator[None]:
    """One run at a time installs a build; another waits for it."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
