"""The guest's kernel and its modules: this machine's own, else Debian's, fetched once.

This machine's kernel is used when its image is readable (``/boot/vmlinuz-*`` of
the running release first, else the newest) and its modules are installed:
the guest then finds every module at its usual place on the shared root.
Otherwise Debian's generic kernel (the package behind ``linux-image-amd64``)
is fetched with ``apt-get download`` into the cache, never installed: the
package is kept there, with an index of its modules, and the modules a VM
asks for are taken out of it when first needed.

Either way the image QEMU boots is the uncompressed ELF ``vmlinux`` (PVH)
unpacked once from the compressed one, which saves the kernel decompressing
itself at every boot (seconds under emulation). A kernel is cached under a
key that changes when it does (the image's size and time, or the Debian
package's version, looked up again whenever apt's package lists change); a
VM holds a shared lock on its kernel's directory while it runs, and an old
kernel is removed once no VM holds it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from agent.host.vm import cache as cache_mod
from agent.host.vm.elf import has_pvh_entry, modinfo, unpack_bzimage
from agent.host.vm.errors import VmError
from agent.host.vm.packages import apt_get

META_PACKAGE = "linux-image-amd64"
APT_LISTS = Path("/var/lib/apt/lists")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")

Notice = Callable[[str], None]


@dataclass(frozen=True)
class Kernel:
    """A kernel in the cache: its image, and where its modules are."""

    key: str  # the cache directory's name; changes when the kernel does
    home: Path  # kernels/<key> in the cache
    version: str  # the release, as uname -r says it in the guest
    image: Path  # what QEMU's -kernel boots
    modules: Path  # .../lib/modules/<version>: the module files, by their relative paths
    package: Path | None  # the Debian package the modules come out of (None: all installed)

    @property
    def lock(self) -> Path:
        """Held shared by every VM that runs this kernel."""
        return self.home / "in-use"

    def index(self) -> ModuleIndex:
        return ModuleIndex.load(self.home / "modules.json")


@dataclass(frozen=True)
class ModuleIndex:
    """Every module of a kernel: its file (relative path) and what it depends on."""

    files: dict[str, str]  # module name -> path under lib/modules/<version>
    depends: dict[str, list[str]]  # module name -> module names
    builtin: frozenset[str]

    @classmethod
    def load(cls, path: Path) -> ModuleIndex:
        data = json.loads(path.read_text())
        return cls(data["files"], data["depends"], frozenset(data["builtin"]))

    def dump(self) -> bytes:
        data = {"files": self.files, "depends": self.depends, "builtin": sorted(self.builtin)}
        return json.dumps(data, indent=0, sort_keys=True).encode()

    def load_order(self, names: Iterable[str]) -> list[str]:
        """The files of ``names`` and of what they need, each after its dependencies;
        built-in modules need no file."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            if name in self.builtin:
                return
            if name not in self.files:
                raise VmError(f"the guest's kernel has no module {name}")
            for dependency in self.depends.get(name, []):
                visit(dependency)
            order.append(self.files[name])

        for name in names:
            visit(module_name(name))
        return order


def module_name(path_or_name: str) -> str:
    """``kernel/fs/ext4/ext4.ko`` -> ``ext4``, ``virtio-rng`` -> ``virtio_rng``:
    the name the kernel knows a module by."""
    name = path_or_name.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


# ------------------------------------------------------------ the choice --
async def current_kernel(cache: Path, notice: Notice) -> Kernel:
    """This machine's kernel when it can be used, else Debian's; cached."""
    if platform.machine() != "x86_64":
        raise VmError(f"the VM launcher runs x86_64 guests; this machine is {platform.machine()}")
    host = host_kernel_files()
    if host is not None:
        return await _cached_host_kernel(cache, *host)
    return await _debian_kernel(cache, notice)


def host_kernel_files(
    boot: Path = Path("/boot"), modules: Path = Path("/lib/modules"), release: str | None = None
) -> tuple[Path, Path] | None:
    """(image, modules directory) of this machine's kernel, if both can be used:
    the running release first, then the newest."""
    running = release or os.uname().release
    candidates = sorted(boot.glob("vmlinuz-*"), key=lambda path: path.stat().st_mtime)
    candidates.sort(key=lambda path: path.name == f"vmlinuz-{running}")
    for image in reversed(candidates):
        version = image.name.removeprefix("vmlinuz-")
        tree = modules / version
        if os.access(image, os.R_OK) and (tree / "modules.dep").is_file():
            return image, tree
    return None


def _host_kernel_key(image: Path, tree: Path) -> str:
    """Changes when the image does."""
    facts = image.stat()
    fingerprint = f"{image}:{facts.st_size}:{facts.st_mtime_ns}"
    return f"host-{tree.name}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


async def _cached_host_kernel(cache: Path, image: Path, tree: Path) -> Kernel:
    key = _host_kernel_key(image, tree)
    home = cache / "kernels" / key
    if not (home / "kernel.json").exists():
        async with cache_mod.cache_lock(cache):
            if not (home / "kernel.json").exists():
                await trio.to_thread.run_sync(_install_host_kernel, home, image, tree)
            _remove_unused(cache, keep=key, prefix="host-")
    return _load(home)


def _install_host_kernel(home: Path, image: Path, tree: Path) -> None:
    with cache_mod.staging(home.parent, home) as staged:
        boot_image = _write_boot_image(staged, image.read_bytes())
        index = _index_of_tree(tree)
        (staged / "modules.json").write_bytes(index.dump())
        _describe(staged, tree.name, boot_image, modules=str(tree), package=None)


def _index_of_tree(tree: Path) -> ModuleIndex:
    """The index of an installed module tree, from its modules.dep."""
    files: dict[str, str] = {}
    depends: dict[str, list[str]] = {}
    for line in (tree / "modules.dep").read_text().splitlines():
        path, _, needed = line.partition(":")
        name = module_name(path)
        files[name] = path
        depends[name] = [module_name(other) for other in needed.split()]
    builtin_file = tree / "modules.builtin"
    builtin = builtin_file.read_text().split() if builtin_file.exists() else []
    return ModuleIndex(files, depends, frozenset(module_name(path) for path in builtin))


# --------------------------------------------------------- Debian's kernel --
async def _debian_kernel(cache: Path, notice: Notice) -> Kernel:
    state_file = cache / "debian.json"
    lists = _lists_stamp()
    state = _read_json(state_file)
    if state.get("lists") == lists and (cache / "kernels" / state["key"] / "kernel.json").exists():
        return _load(cache / "kernels" / state["key"])
    async with cache_mod.cache_lock(cache):
        state = _read_json(state_file)  # another process may have done it meanwhile
        known = cache / "kernels" / state.get("key", "-")
        if state.get("lists") == lists and (known / "kernel.json").exists():
            return _load(known)
        try:
            package, deb = await _debian_candidate()
        except VmError:
            if (known / "kernel.json").exists():  # offline: keep what we have
                notice(f"cannot ask apt for a newer kernel; using {state['key']}")
                return _load(known)
            raise
        key = "debian-" + deb.removesuffix(".deb")
        home = cache / "kernels" / key
        if not (home / "kernel.json").exists():
            notice(f"fetching {package} (apt-get download, one-time, about 70 MB)")
            await _fetch_debian_kernel(home, package)
        cache_mod.write_atomically(state_file, json.dumps({"lists": lists, "key": key}).encode())
        _remove_unused(cache, keep=key, prefix="debian-")
    return _load(home)


def _lists_stamp() -> str:
    """Changes whenever ``apt-get update`` brings new package lists."""
    try:
        return str(APT_LISTS.stat().st_mtime_ns)
    except OSError:
        return ""


async def _debian_candidate() -> tuple[str, str]:
    """(package, .deb file name) of the kernel ``linux-image-amd64`` stands for now;
    the package lists are brought up to date once if they do not know it."""
    for attempt in range(2):
        if attempt:
            await apt_get("update", "-qq")
        depends = await _output("apt-cache", "depends", META_PACKAGE)
        match = re.search(r"Depends: (linux-image-\S+)", depends or "")
        if match is None:
            continue
        package = match[1]
        uris = await _output("apt-get", "download", "--print-uris", package)
        found = re.search(r"^'\S+' (\S+\.deb) ", uris or "", re.M)
        if found:
            return package, found[1]
    raise VmError(f"apt knows no {META_PACKAGE} to fetch the guest's kernel from")


async def _output(*command: str) -> str | None:
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    return done.stdout.decode(errors="replace") if done.returncode == 0 else None


async def _fetch_debian_kernel(home: Path, package: str) -> None:
    with cache_mod.staging(home.parent, home) as staged:
        command = ["apt-get", "download", "-qq", package]
        if os.geteuid() == 0:  # apt's sandbox user could not write here
            command[2:2] = ["-o", "APT::Sandbox::User=root"]
        done = await trio.run_process(
            command, cwd=staged, capture_stdout=True, stderr=subprocess.STDOUT, check=False
        )
        if done.returncode:
            output = done.stdout.decode(errors="replace").strip()[-2000:]
            raise VmError(f"{' '.join(command)} failed:\n{output}")
        [deb] = staged.glob("*.deb")
        deb = deb.rename(staged / "package.deb")
        await trio.to_thread.run_sync(_unpack_debian_kernel, staged, deb)


def _unpack_debian_kernel(staged: Path, deb: Path) -> None:
    """One pass over the package: the boot image and the index of its modules."""
    files: dict[str, str] = {}
    depends: dict[str, list[str]] = {}
    builtin: list[str] = []
    version = image = None
    for name, read in _package_files(deb):
        if (match := re.fullmatch(r"boot/vmlinuz-(.+)", name)) is not None:
            version, image = match[1], read()
        elif (found := re.fullmatch(r"lib/modules/([^/]+)/(.+)", name)) is not None:
            relative = found[2]
            if relative.endswith(MODULE_SUFFIXES):
                info = modinfo(_decompressed(relative, read()))
                module = module_name(relative)
                files[module] = relative
                depends[module] = [d for d in ",".join(info.get("depends", [])).split(",") if d]
            elif relative == "modules.builtin":
                builtin = read().decode().split()
    if version is None or image is None:
        raise VmError(f"{deb.name} holds no boot/vmlinuz-*")
    boot_image = _write_boot_image(staged, image)
    index = ModuleIndex(files, depends, frozenset(module_name(path) for path in builtin))
    (staged / "modules.json").write_bytes(index.dump())
    _describe(staged, version, boot_image, modules="modules", package="package.deb")


def _package_files(deb: Path) -> Iterable[tuple[str, Callable[[], bytes]]]:
    """(path without the leading ./, reader) of each regular file of a Debian package."""
    command = ["dpkg-deb", "--fsys-tarfile", str(deb)]
    # stderr: it says "broken pipe" when we stop reading once we have what we need.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as tar:
        assert tar.stdout is not None
        with tarfile.open(fileobj=tar.stdout, mode="r|") as archive:
            for member in archive:
                if member.isfile():
                    yield member.name.removeprefix("./"), functools.partial(_read, archive, member)
            tar.stdout.read()  # to the end, so that dpkg-deb exits
    if tar.returncode:
        raise VmError(f"dpkg-deb --fsys-tarfile {deb} failed ({tar.returncode})")


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = archive.extractfile(member)
    assert extracted is not None
    return extracted.read()


def _decompressed(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return data


def _write_boot_image(home: Path, compressed: bytes) -> str:
    """The image QEMU boots: the unpacked vmlinux when it can boot by PVH."""
    vmlinux = unpack_bzimage(compressed)
    if vmlinux is not None and has_pvh_entry(vmlinux):
        (home / "vmlinux").write_bytes(vmlinux)
        return "vmlinux"
    (home / "bzImage").write_bytes(compressed)
    return "bzImage"


def _describe(home: Path, version: str, image: str, *, modules: str, package: str | None) -> None:
    """kernel.json, written last: a kernel directory without it is incomplete."""
    (home / "in-use").touch()
    description = {"version": version, "image": image, "modules": modules, "package": package}
    (home / "kernel.json").write_text(json.dumps(description))


def _load(home: Path) -> Kernel:
    description = json.loads((home / "kernel.json").read_text())
    package = description["package"]
    return Kernel(
        key=home.name,
        home=home,
        version=description["version"],
        image=home / description["image"],
        modules=home / description["modules"],  # absolute for the host's tree
        package=None if package is None else home / package,
    )


def _read_json(path: Path) -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def _remove_unused(cache: Path, *, keep: str, prefix: str) -> None:
    """Remove the other kernels of the same kind that no VM holds (cache lock held)."""
    for home in (cache / "kernels").glob(prefix + "*"):
        if home.name == keep:
            continue
        fd = cache_mod.try_lock_exclusive(home / "in-use")
        if fd is None and (home / "in-use").exists():
            continue  # a VM runs it
        try:
            shutil.rmtree(home, ignore_errors=True)
            for image in (cache / "initramfs").glob(home.name + "-*"):
                shutil.rmtree(image, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)


# ------------------------------------------------------------- modules --
async def module_files(cache: Path, kernel: Kernel, relative: list[str]) -> None:
    """Make sure the module files ``relative`` are in ``kernel.modules``: taken out of
    its Debian package the first time a VM needs them."""
    missing = [path for path in relative if not (kernel.modules / path).exists()]
    if not missing:
        return
    if kernel.package is None:
        raise VmError(f"modules missing from {kernel.modules}: {', '.join(missing)}")
    async with cache_mod.cache_lock(cache):
        missing = [path for path in missing if not (kernel.modules / path).exists()]
        if missing:
            await trio.to_thread.run_sync(_extract_modules, kernel, set(missing))


def _extract_modules(kernel: Kernel, wanted: set[str]) -> None:
    assert kernel.package is not None
    prefix = f"lib/modules/{kernel.version}/"
    for name, read in _package_files(kernel.package):
        relative = name.removeprefix(prefix)
        if name.startswith(prefix) and relative in wanted:
            cache_mod.write_atomically(kernel.modules / relative, read())
            wanted.discard(relative)
            if not wanted:
                return
    if wanted:
        raise VmError(f"{kernel.package.name} lacks {', '.join(sorted(wanted))}")


def read_module(kernel: Kernel, relative: str) -> tuple[str, bytes]:
    """(path in the guest's tree, content) of a module, decompressed: busybox's
    insmod takes plain files."""
    data = (kernel.modules / relative).read_bytes()
    plain = relative
    for suffix in (".xz", ".gz"):
        plain = plain.removesuffix(suffix)
    return plain, _decompressed(relative, data)
