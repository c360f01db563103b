"""Kernel modules that run-in-vm's cached kernel leaves out, from the same Debian package.

run-in-vm keeps only the modules its own guests need (virtio console, 9p, overlay). A
test that gives its VM a disk or a network card loads more: :func:`extra_modules`
fetches the kernel's Debian package once (``apt-get download``), keeps the modules
asked for and their dependencies beside run-in-vm's kernel, and gives them in load
order. Used by ``test_vm_qe.py`` (a virtio disk) and ``test_libvirt.py`` (a disk and a
network card).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(
    os.environ.get("RUN_IN_VM_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qga-vm"
)


def extra_modules(run_in_vm: Path, names: tuple[str, ...]) -> list[str]:
    """The module files of ``names`` and their dependencies for run-in-vm's kernel, each
    after what it needs. Fetched once per kernel and set of names, then cached."""
    subprocess.run([str(run_in_vm), "--setup", "-q"], check=True, capture_output=True)
    version = (CACHE / "kernel" / "version").read_text().strip()
    tree = CACHE / "extra-modules" / version / "-".join(names)
    order = tree / "load-order"
    tree.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "extra-modules.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not order.exists():
            _fetch_modules(version, names, tree)
    return [str(tree / name) for name in order.read_text().split()]


def _fetch_modules(version: str, wanted: tuple[str, ...], tree: Path) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        subprocess.run(
            [
                "apt-get",
                "download",
                "-qq",
                "-o",
                "APT::Sandbox::User=root",
                f"linux-image-{version}",
            ],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        [deb] = Path(tmp).glob("*.deb")
        unpacked = Path(tmp) / "x"
        subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
        subprocess.run(["busybox", "depmod", "-b", str(unpacked), version], check=True)
        modules = unpacked / "lib" / "modules" / version
        staged = Path(tmp) / "tree"
        staged.mkdir()
        names = _load_order(modules / "modules.dep", wanted)
        for name in names:
            shutil.copy(modules / name, staged / Path(name).name)
        (staged / "load-order").write_text("\n".join(Path(name).name for name in names) + "\n")
        if tree.exists():
            shutil.rmtree(tree)
        staged.rename(tree)


def _load_order(modules_dep: Path, names: tuple[str, ...]) -> list[str]:
    """The module files of ``names`` and their dependencies, each after what it needs."""
    depends: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.read_text().splitlines():
        module, _, dependencies = line.partition(":")
        depends[module] = dependencies.split()
        by_name[Path(module).name.split(".ko")[0].replace("-", "_")] = module
    order: list[str] = []

    def visit(module: str) -> None:
        if module not in order:
            for dependency in depends[module]:
                visit(dependency)
            order.append(module)

    for name in names:
        visit(by_name[name])
    return order
