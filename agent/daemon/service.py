"""``trio-qga-service``: the systemd unit, udev rule and files around an agent that
pip or pipx installed, where no Debian package puts them in place.

``install`` writes the files the Debian package ships (units, udev rule, fsfreeze
hook, example configuration, man page) under the system's local places,
ExecStart pointing at this installation's ``trio-qga``, and lets udev start the
agent if the port is there. ``remove`` takes away what ``install`` wrote, once
the agent is stopped. Both can be run again and again: a file is written only
where it differs, and the list of what was written (with each file's hash, in
``/var/lib/trio-qga/service-files.json``) is what ``remove`` removes, so a file
changed since is kept and one written by someone else is never touched.
Configuration files (the hook, qemu-ga.conf) are written only where none exists.

``restart`` and ``remove`` never stop an agent that reports filesystems frozen:
they wait a bounded time for the thaw (``agent.daemon.thaw``), then refuse.
``wait-thawed`` is that wait alone, for the Debian package's maintainer scripts.

``--root DIR`` puts everything under DIR (an image being built, a test) and then
runs neither systemctl nor udevadm: they act on the running system only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from agent.argtypes import SECONDS
from agent.daemon import conffile, thaw
from agent.system.userfiles import replace_file

UNIT = "trio-qga.service"
MULTI_UNIT = "trio-qga-multi.service"  # several transports at once (docs/transports.md)
# The units an administrator may enable, in place of the one udev starts.
OPTIONAL_UNITS = ("trio-qga-vsock.socket", "trio-qga-vsock.service", MULTI_UNIT)
AGENTS = (UNIT, OPTIONAL_UNITS[1], MULTI_UNIT)  # the services that run an agent
PORT_NAME = "org.qemu.guest_agent.0"
PACKAGED_EXEC = "ExecStart=/usr/sbin/trio-qga"  # the units' line, as the Debian package has it
MANIFEST = "var/lib/trio-qga/service-files.json"


@dataclass(frozen=True)
class Placed:
    """A file of ``agent/data`` and where ``install`` puts it (relative to the root).

    A ``config`` file is the administrator's once it exists: written only where
    there is none, as qemu-ga's hook or an old qemu-ga.conf may be there already.
    """

    source: str
    target: str
    mode: int = 0o644
    config: bool = False


FILES = (
    Placed(UNIT, f"etc/systemd/system/{UNIT}"),
    *(Placed(unit, f"etc/systemd/system/{unit}") for unit in OPTIONAL_UNITS),
    Placed("60-trio-qga.rules", "etc/udev/rules.d/60-trio-qga.rules"),
    Placed("trio-qga.8", "usr/local/share/man/man8/trio-qga.8"),
    Placed("fsfreeze-hook", "etc/qemu/fsfreeze-hook", 0o755, config=True),
    Placed("qemu-ga.conf", conffile.DEFAULT_CONFIG_FILE.lstrip("/"), config=True),
)
HOOK_DIR = "etc/qemu/fsfreeze-hook.d"

Runner = Callable[[Sequence[str]], int]


class Refused(Exception):
    """What the command will not do, and why."""


def data(name: str) -> bytes:
    """A file of the package's ``agent/data``."""
    return resources.files("agent").joinpath("data", name).read_bytes()


def default_exec() -> Path:
    """The ``trio-qga`` of this installation: beside this command (pipx links it
    from a venv: followed), beside the interpreter, else on $PATH."""
    for directory in (Path(sys.argv[0]).resolve().parent, Path(sys.executable).parent):
        if (directory / "trio-qga").is_file():
            return directory / "trio-qga"
    found = shutil.which("trio-qga")
    if found is None:
        raise Refused("cannot find the trio-qga command: name it with --exec")
    return Path(found).absolute()


def content(placed: Placed, exec_path: Path) -> bytes:
    """What ``install`` writes for ``placed``: a unit's ExecStart runs ``exec_path``."""
    text = data(placed.source)
    if placed.source.endswith(".service"):
        text = text.replace(PACKAGED_EXEC.encode(), f"ExecStart={exec_path}".encode())
    return text


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Installation:
    """The files under ``root``, and what was written there (the manifest)."""

    def __init__(self, root: Path, say: Callable[[str], None] = print) -> None:
        self.root = root
        self.say = say
        self.manifest_path = root / MANIFEST
        try:
            saved = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            saved = {}
        self.files: dict[str, str] = saved.get("files", {})
        self.dirs: list[str] = saved.get("dirs", [])

    def _current(self, target: str) -> bytes | None:
        path = self.root / target
        return path.read_bytes() if path.is_file() and not path.is_symlink() else None

    def install(self, exec_path: Path, force: bool = False) -> bool:
        """Write what differs; True if anything changed."""
        changed = self._make_dirs(self.manifest_path.parent)
        try:  # what was written is recorded, even if a later file is refused
            for placed in FILES:
                changed |= self._place(placed, content(placed, exec_path), force)
            changed |= self._make_dirs(self.root / HOOK_DIR)
        finally:
            self._save()
        return changed

    def _place(self, placed: Placed, new: bytes, force: bool) -> bool:
        path = self.root / placed.target
        current = self._current(placed.target)
        exists = path.exists() or path.is_symlink()
        ours = current is not None and self.files.get(placed.target) == digest(current)
        if exists and not ours and placed.config:
            # Even one just like ours (the Debian package's postinst writes the
            # same qemu-ga.conf): someone else's, so never removed by ``remove``.
            self.say(f"kept {path}: not written by trio-qga-service, left as it is")
            return False
        if current == new:
            self.files[placed.target] = digest(new)
            return False
        if exists and not ours and not force:
            raise Refused(
                f"{path} exists and was not written by trio-qga-service "
                "(or was changed since): left alone; --force replaces it"
            )
        self._make_dirs(path.parent)
        replace_file(path, new, durable=True, mode=placed.mode)
        self.files[placed.target] = digest(new)
        self.say(f"{'updated' if exists else 'wrote'} {path}")
        return True

    def _make_dirs(self, directory: Path) -> bool:
        """Make ``directory`` and its missing parents, recording them for ``remove``."""
        missing = [path for path in (directory, *directory.parents) if not path.exists()]
        for path in reversed(missing):
            path.mkdir(mode=0o755)
            self.dirs.append(str(path.relative_to(self.root)))
        if HOOK_DIR in self.dirs[len(self.dirs) - len(missing) :]:
            self.say(f"created {self.root / HOOK_DIR}/")
        return bool(missing)

    def remove(self) -> None:
        """Remove the files written and unchanged since, then the manifest."""
        for target, written in sorted(self.files.items()):
            path = self.root / target
            current = self._current(target)
            if current is None:
                continue
            if digest(current) != written:
                self.say(f"kept {path}: changed since it was installed")
                continue
            path.unlink()
            self.say(f"removed {path}")
        self.manifest_path.unlink(missing_ok=True)
        for directory in reversed(self.dirs):  # the deepest first
            try:
                (self.root / directory).rmdir()
            except OSError:  # not empty: the administrator's hooks, say
                if directory == HOOK_DIR:
                    self.say(f"kept {self.root / directory}/: not empty")
        self.files, self.dirs = {}, []

    @property
    def installed(self) -> bool:
        return self.manifest_path.exists()

    def _save(self) -> None:
        text = json.dumps({"files": self.files, "dirs": self.dirs}, indent=1, sort_keys=True)
        replace_file(self.manifest_path, text.encode() + b"\n", durable=True, mode=0o644)


def run(argv: Sequence[str]) -> int:
    """Run a systemctl or udevadm command; its exit status (its output is shown)."""
    return subprocess.run(list(argv), check=False, timeout=120).returncode


@dataclass
class System:
    """systemd and udev of the running system; ``live`` False: leave them alone."""

    live: bool
    run: Runner = run

    def running(self) -> bool:
        """Whether an agent's service runs (on the port, or socket-activated)."""
        return self.live and any(
            self.run(["systemctl", "--quiet", "is-active", unit]) == 0 for unit in AGENTS
        )

    def reload(self) -> None:
        if self.live:
            self.run(["systemctl", "daemon-reload"])
            self.run(["udevadm", "control", "--reload-rules"])

    def replay_port(self) -> None:
        """Replay the port's "add" event: udev starts the agent its rules name."""
        if self.live:
            self.run(
                [
                    "udevadm",
                    "trigger",
                    "--action=add",
                    "--subsystem-match=virtio-ports",
                    f"--attr-match=name={PORT_NAME}",
                ]
            )
            self.run(["udevadm", "settle", "--timeout=30"])


def guard(
    system: System,
    timeout: float,
    *,
    config_file: str | None = None,
    statedir: str | None = None,
    if_running: bool = True,
) -> None:
    """Wait for the thaw if the agent reports filesystems frozen (and, with
    ``if_running``, runs: a stopped agent thaws nothing); Refused after ``timeout``."""
    if if_running and not system.running():
        return
    still = thaw.wait_thawed(statedir or thaw.statedir(config_file), timeout)
    if still is not None:
        raise Refused(
            f"{still.describe()}, still after {timeout:g} s; stopping the agent would thaw "
            "them under the host. Once the host has thawed them (guest-fsfreeze-thaw, "
            "virsh domfsthaw), try again."
        )


def install(args: argparse.Namespace, system: System) -> int:
    exec_path = Path(args.exec) if args.exec else default_exec()
    if not exec_path.is_absolute():
        raise Refused(f"--exec {exec_path}: systemd needs an absolute path")
    installation = Installation(Path(args.root))
    if not installation.install(exec_path, force=args.force):
        print("everything in place already")
    system.reload()
    if not args.no_start:
        system.replay_port()
    return 0


def remove(args: argparse.Namespace, system: System) -> int:
    installation = Installation(Path(args.root))
    if not installation.installed:
        print(f"nothing to remove: no {installation.manifest_path}")
        return 0
    guard(system, args.timeout)
    if system.live:
        system.run(["systemctl", "disable", "--quiet", "--now", *OPTIONAL_UNITS])
        system.run(["systemctl", "stop", UNIT])
    installation.remove()
    system.reload()
    system.replay_port()  # qemu-ga's rule, if it is installed, starts it now
    return 0


def restart(args: argparse.Namespace, system: System) -> int:
    if not system.running():
        print("trio-qga is not running: nothing to restart")
        return 0
    guard(system, args.timeout, config_file=args.config)
    return system.run(["systemctl", "try-restart", *AGENTS])


def wait_thawed(args: argparse.Namespace, system: System) -> int:
    guard(
        system,
        args.timeout,
        config_file=args.config,
        statedir=args.statedir,
        if_running=args.if_running,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-qga-service",
        description="Install or remove trio-qga's systemd unit and udev rule (pip and pipx "
        "installs), and restart the agent, never while it has filesystems frozen.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, function: Callable[..., int], help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, description=help)
        command.set_defaults(function=function)
        return command

    def wait_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--timeout",
            type=SECONDS,
            default=thaw.DEFAULT_WAIT,
            metavar="SECONDS",
            help=f"wait this long for a thaw (default {thaw.DEFAULT_WAIT:g})",
        )

    def config_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="the agent's configuration file, which names its state directory",
        )

    def root_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--root",
            default="/",
            metavar="DIR",
            help="install under DIR, and run neither systemctl nor udevadm (default /)",
        )

    command = add("install", install, "write the unit, the udev rule and the files around them")
    root_option(command)
    command.add_argument(
        "--exec", metavar="PATH", help="the trio-qga the unit runs (default: this one's)"
    )
    command.add_argument(
        "--force", action="store_true", help="replace a unit or rule written by someone else"
    )
    command.add_argument(
        "--no-start", action="store_true", help="do not let udev start the agent now"
    )
    command = add("remove", remove, "stop the agent and remove what install wrote")
    root_option(command)
    wait_option(command)
    command = add("restart", restart, "restart the agent (after an upgrade) once thawed")
    wait_option(command)
    config_option(command)
    command = add("wait-thawed", wait_thawed, "wait until the agent reports nothing frozen")
    wait_option(command)
    config_option(command)
    command.add_argument("-t", "--statedir", metavar="DIR", help="the agent's state directory")
    command.add_argument(
        "--if-running",
        action="store_true",
        help="only if the agent's service runs (what the Debian package's scripts ask)",
    )
    return parser


def main(argv: Sequence[str] | None = None, runner: Runner = run) -> int:
    args = build_parser().parse_args(argv)
    root = getattr(args, "root", "/")
    system = System(live=root == "/" and os.path.isdir("/run/systemd/system"), run=runner)
    try:
        result: int = args.function(args, system)
    except (Refused, conffile.ConfigFileError, OSError) as err:
        print(f"trio-qga-service: {err}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
