"""``trio-qga-vm``'s options as they reach :class:`VmConfig` (no VM booted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.host.vm.cli import build_parser, config_from
from agent.host.vm.config import VmConfig


def config(*options: str) -> VmConfig:
    return config_from(build_parser().parse_args(["run", *options, "--", "true"]))


def test_the_defaults_are_vm_config_s() -> None:
    assert config() == VmConfig(boot_timeout=300.0)


@pytest.mark.parametrize(
    ("options", "field", "value"),
    [
        (["--cpus", "1"], "cpus", 1),
        (["--memory", "512"], "memory", 512),
        (["--accel", "tcg"], "accel", "tcg"),
        (["--timeout", "9"], "timeout", 9.0),
        (["--root-fs", "virtiofs"], "root_fs", "virtiofs"),
        (["--rw", "/tmp"], "shares", (Path("/tmp"),)),
        (["--network"], "network", True),
        (["--isa-serial"], "isa_serial", True),
        (["--systemd"], "systemd", True),
        (["--module", "dummy", "--module", "loop"], "modules", ("dummy", "loop")),
        (["--hostname", "box"], "hostname", "box"),
    ],
)
def test_each_option_sets_its_field(options: list[str], field: str, value: object) -> None:
    assert getattr(config(*options), field) == value


def test_the_launcher_starts_qemu_before_it_imports_the_client() -> None:
    """The client's module brings the schema's models (pydantic): boot_vm imports
    it once QEMU is starting, so that QEMU does not wait for it."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, agent.host.vm.cli; print(*sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "agent.host.vm.machine" in imported  # boot_vm's module: the check sees it
    for module in ("agent.host.client", "agent.host.run_command", "pydantic"):
        assert module not in imported
