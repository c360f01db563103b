"""The real qemu-ga, run the same way as ours, for differential tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.markers import require_marker
from tests.support.processes import running_agent, stop, wait_for_socket


def qemu_ga_binary() -> str:
    """The path of qemu-ga; fails in CI (which installs it), skips loudly elsewhere.
    Only for tests marked ``qemu_ga``."""
    require_marker("qemu_ga")
    found = shutil.which("qemu-ga") or (
        "/usr/sbin/qemu-ga" if Path("/usr/sbin/qemu-ga").exists() else None
    )
    if found:
        return found
    message = "qemu-ga is not installed: run scripts/test, which installs qemu-guest-agent"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def running_qemu_ga(workdir: Path, *extra: str) -> Iterator[Path]:
    """qemu-ga -m unix-listen on a socket in ``workdir``; yields the socket path."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "qemu-ga.sock"
    proc = subprocess.Popen(
        [
            qemu_ga_binary(),
            "-m",
            "unix-listen",
            "-p",
            str(sock),
            "-t",
            str(workdir),
            "-f",
            str(workdir / "qemu-ga.pid"),
            *extra,
        ],
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_socket(sock, proc)
        yield sock
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def qemu_ga_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real qemu-ga on a unix socket, for the tests of one module."""
    with running_qemu_ga(tmp_path_factory.mktemp("qemu-ga")) as sock:
        yield sock


@pytest.fixture(scope="module")
def our_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Our agent as a process on a unix socket, for the tests of one module."""
    with running_agent(tmp_path_factory.mktemp("trio-qga")) as (_, sock):
        yield sock
