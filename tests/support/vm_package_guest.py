"""Runs inside a test VM booted with systemd as PID 1: installs, upgrades, swaps and
removes the packaged agent, one step per call, as an image builder or an
administrator would, and says what it found.

    vm_package_guest.py STEP [ARGS...]

Each step prints one JSON object on its last line (``{"ok": true, ...}``) and
exits 0, or prints what went wrong and exits 1. The host drives the steps (with
a channel of its own, not the port under test) and, between them, talks to the
agent under test on the port ``org.qemu.guest_agent.0``: which agent answers
(``guest-info``'s version), and freezes and thaws the scratch disk through it.

Steps
  scratch DEVICE MOUNTPOINT     mkfs.ext4 DEVICE and mount it (what the host freezes)
  status                        which agent runs, its pid, the packages' states
  deb-install DEB               apt-get install ./DEB (one command: it removes
                                qemu-guest-agent); the agent must start on its own
  deb-next DEB OUT              DEB repacked with the next Debian revision: an upgrade
  deb-upgrade DEB [WAIT]        dpkg -i DEB with TRIO_QGA_THAW_WAIT=WAIT; says whether
                                it succeeded, what it printed, the pids before and after
  deb-remove                    apt-get remove trio-qga; the agent must stop
  qemu-ga-install DEB           apt-get install ./DEB: qemu-guest-agent back in place
  wheel-install WHEELHOUSE      a venv in /opt/trio-qga from the wheels (no index),
                                then trio-qga-service install; the agent must start
  wheel-upgrade WHEELHOUSE [WAIT]
                                pip reinstalls trio-qga, then wheel-restart WAIT
  wheel-restart [WAIT]          trio-qga-service restart --timeout WAIT; says whether
                                it restarted, what it printed, the pids before and after
  wheel-remove                  trio-qga-service remove, then the venv; the agent
                                must stop

Stdlib only, run by the guest's /usr/bin/python3 (the venv under test is not
this script's). Nothing waits without a bound.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

UNITS = {"trio-qga": "trio-qga.service", "qemu-ga": "qemu-guest-agent.service"}
PORT = Path("/dev/virtio-ports/org.qemu.guest_agent.0")
MARKER = Path("/run/qga.state.isfrozen")
HOOK = Path("/etc/qemu/fsfreeze-hook")
VENV = Path("/opt/trio-qga")
START_TIMEOUT = 120.0  # seconds for an agent to be active (TCG, emulated start-up)
COMMAND_TIMEOUT = 600.0  # seconds for one apt-get, dpkg or pip under emulation
# apt-get on local .debs (the guest has no network; --no-download would refuse a
# local file): no prompt, a changed conffile kept.
APT = [
    "apt-get",
    "-y",
    "-q",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
]
# The launcher's agent names a configuration file of its own ($QGA_CONF), which
# the packaged agent does not read: the scripts under test must not either.
ENV = {
    **{k: v for k, v in os.environ.items() if k != "QGA_CONF"},
    "DEBIAN_FRONTEND": "noninteractive",
}

Result = dict[str, Any]


class StepFailed(Exception):
    """What the step found wrong."""


def run(argv: Sequence[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``argv`` to its end, its output kept (and echoed, for the host's log)."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env={**ENV, **env},
        check=False,
    )
    sys.stdout.write(f"$ {' '.join(argv)}  -> {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def must(argv: Sequence[str], **env: str) -> subprocess.CompletedProcess[str]:
    result = run(argv, **env)
    if result.returncode:
        raise StepFailed(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def unit(name: str) -> Result:
    """The unit's state, main pid and when it last became active (monotonic µs)."""
    result = subprocess.run(
        [
            "systemctl",
            "show",
            name,
            "--property=ActiveState,MainPID,ActiveEnterTimestampMonotonic,LoadState",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {
        "active": values.get("ActiveState") == "active",
        "state": values.get("ActiveState"),
        "loaded": values.get("LoadState") == "loaded",
        "pid": int(values.get("MainPID", "0") or 0),
        "since": int(values.get("ActiveEnterTimestampMonotonic", "0") or 0),
    }


def package(name: str) -> str:
    """dpkg's status of ``name``: "install ok installed", "deinstall ok
    config-files", or "" when dpkg does not know it."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout if result.returncode == 0 else ""


def owner(path: Path) -> str:
    result = subprocess.run(
        ["dpkg-query", "-S", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout.split(":")[0] if result.returncode == 0 else ""


def status() -> Result:
    return {
        "units": {label: unit(name) for label, name in UNITS.items()},
        "packages": {name: package(name) for name in ("trio-qga", "qemu-guest-agent")},
        "port": PORT.exists(),
        "frozen_marker": MARKER.exists(),
        "hook_owner": owner(HOOK),
        "conf": Path("/etc/qemu/qemu-ga.conf").exists(),
    }


def wait_until(what: str, check: Callable[[], bool], timeout: float = START_TIMEOUT) -> float:
    """Seconds until ``check()`` held; StepFailed after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise StepFailed(f"{what}: not within {timeout:g} s; {json.dumps(status())}")
        time.sleep(0.25)
    return time.monotonic() - start


def only_running(label: str | None) -> Callable[[], bool]:
    """The check that ``label``'s agent runs and no other (None: none runs)."""

    def check() -> bool:
        return all(unit(name)["active"] == (other == label) for other, name in UNITS.items())

    return check


def scratch(device: str, mountpoint: str) -> Result:
    must(["mkfs.ext4", "-q", "-F", device])
    Path(mountpoint).mkdir(parents=True, exist_ok=True)
    must(["mount", device, mountpoint])
    (Path(mountpoint) / "data").write_text("written before the freeze\n")
    return {"mounted": mountpoint}


def deb_install(deb: str) -> Result:
    was = package("qemu-guest-agent")
    must([*APT, "install", str(Path(deb).resolve())])
    waited = wait_until("trio-qga.service active, qemu-ga stopped", only_running("trio-qga"))
    found = status()
    if found["packages"]["trio-qga"] != "install ok installed":
        raise StepFailed(f"trio-qga is not installed: {found}")
    if was == "install ok installed" and found["packages"]["qemu-guest-agent"].startswith(
        "install"
    ):
        raise StepFailed("qemu-guest-agent was not removed in favour of trio-qga")
    if found["hook_owner"] != "trio-qga":
        raise StepFailed(f"{HOOK} belongs to {found['hook_owner']!r}, not trio-qga")
    version = must(["/usr/sbin/trio-qga", "-V"]).stdout.strip()
    man = Path("/usr/share/man/man8/trio-qga.8.gz").exists()
    return {**found, "started_after": waited, "version": version, "man_page": man}


def deb_next(deb: str, out: str) -> Result:
    """The same package with the next Debian revision (0.1.0-1 -> 0.1.0-2)."""
    with tempfile.TemporaryDirectory() as work:
        tree = Path(work) / "tree"
        must(["dpkg-deb", "-R", deb, str(tree)])
        control = tree / "DEBIAN" / "control"
        text = control.read_text()
        version = re.search(r"^Version: (.+)-(\d+)$", text, re.MULTILINE)
        if version is None:
            raise StepFailed(f"no Debian revision in {deb}'s Version")
        upstream, revision = version.group(1), int(version.group(2))
        next_version = f"{upstream}-{revision + 1}"
        control.write_text(text.replace(version.group(0), f"Version: {next_version}"))
        must(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), out])
    return {"version": next_version, "deb": out}


def deb_upgrade(deb: str, wait: str = "60") -> Result:
    """dpkg -i DEB while the host may hold a freeze: what happened, not a verdict
    (the host knows whether it thawed in time)."""
    before = unit(UNITS["trio-qga"])
    started = time.monotonic()
    result = run(["dpkg", "-i", "--force-confold", deb], TRIO_QGA_THAW_WAIT=wait)
    took = time.monotonic() - started
    after = unit(UNITS["trio-qga"])
    return {
        "upgraded": result.returncode == 0,
        "exit": result.returncode,
        "output": result.stdout + result.stderr,
        "seconds": took,
        "before": before,
        "after": after,
        "restarted": after["pid"] != before["pid"] and after["active"],
        "package": package("trio-qga"),
    }


def deb_remove() -> Result:
    must([*APT, "remove", "trio-qga"])
    wait_until("trio-qga.service stopped", lambda: not unit(UNITS["trio-qga"])["active"])
    found = status()
    if found["packages"]["trio-qga"] not in ("deinstall ok config-files", ""):
        raise StepFailed(f"trio-qga is still installed: {found}")
    return found


def qemu_ga_install(deb: str) -> Result:
    """qemu-guest-agent back: apt removes trio-qga (its Conflicts) in the same
    command. qemu-guest-agent's own scripts do not start its static unit: if it
    is not running once installed, replay the port's event as a reboot would,
    and say so."""
    must([*APT, "install", str(Path(deb).resolve())])
    found = status()
    if found["packages"]["trio-qga"].startswith("install"):
        raise StepFailed(f"trio-qga was not removed in favour of qemu-guest-agent: {found}")
    if found["hook_owner"] != "qemu-guest-agent":
        raise StepFailed(f"{HOOK} belongs to {found['hook_owner']!r}, not qemu-guest-agent")
    replayed = False
    try:
        # Its scripts would have started it before apt-get returned.
        wait_until("qemu-ga started by its package", only_running("qemu-ga"), timeout=5)
    except StepFailed:
        replayed = True
        must(["udevadm", "trigger", "--action=add", "--subsystem-match=virtio-ports"])
        wait_until("qemu-ga started by udev", only_running("qemu-ga"))
    return {**status(), "needed_udev_replay": replayed}


def pip_install(wheelhouse: str, *options: str) -> None:
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index"]
    must([*pip, "--find-links", wheelhouse, *options, "trio-qga"])


def wheel_install(wheelhouse: str) -> Result:
    must(["/usr/bin/python3", "-m", "venv", str(VENV)])
    pip_install(wheelhouse)
    must([str(VENV / "bin" / "trio-qga-service"), "install"])
    waited = wait_until("trio-qga.service active, qemu-ga stopped", only_running("trio-qga"))
    unit_text = Path("/etc/systemd/system/trio-qga.service").read_text()
    if f"ExecStart={VENV}/bin/trio-qga" not in unit_text:
        raise StepFailed("the unit does not run the venv's trio-qga")
    again = must([str(VENV / "bin" / "trio-qga-service"), "install"]).stdout
    return {**status(), "started_after": waited, "second_install": again.strip()}


def wheel_upgrade(wheelhouse: str, wait: str = "60") -> Result:
    """pip reinstalls trio-qga (not its dependencies), then ``wheel-restart``."""
    pip_install(wheelhouse, "--force-reinstall", "--no-deps")
    return wheel_restart(wait)


def wheel_restart(wait: str = "60") -> Result:
    """trio-qga-service restart --timeout WAIT: what happened, not a verdict."""
    before = unit(UNITS["trio-qga"])
    started = time.monotonic()
    result = run([str(VENV / "bin" / "trio-qga-service"), "restart", "--timeout", wait])
    took = time.monotonic() - started
    after = unit(UNITS["trio-qga"])
    return {
        "restarted": after["pid"] != before["pid"] and after["active"],
        "exit": result.returncode,
        "output": result.stdout + result.stderr,
        "seconds": took,
        "before": before,
        "after": after,
    }


def wheel_remove() -> Result:
    must([str(VENV / "bin" / "trio-qga-service"), "remove"])
    wait_until("trio-qga.service stopped", lambda: not unit(UNITS["trio-qga"])["active"])
    left = [
        str(path)
        for path in (
            Path("/etc/systemd/system/trio-qga.service"),
            Path("/etc/udev/rules.d/60-trio-qga.rules"),
            Path("/var/lib/trio-qga/service-files.json"),
        )
        if path.exists()
    ]
    if left:
        raise StepFailed(f"left behind: {left}")
    shutil.rmtree(VENV)
    return status()


STEPS: dict[str, Callable[..., Result]] = {
    "scratch": scratch,
    "status": status,
    "deb-install": deb_install,
    "deb-next": deb_next,
    "deb-upgrade": deb_upgrade,
    "deb-remove": deb_remove,
    "qemu-ga-install": qemu_ga_install,
    "wheel-install": wheel_install,
    "wheel-upgrade": wheel_upgrade,
    "wheel-restart": wheel_restart,
    "wheel-remove": wheel_remove,
}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in STEPS:
        print(__doc__, file=sys.stderr)
        return 2
    step = STEPS[argv[0]]
    try:
        inspect.signature(step).bind(*argv[1:])
    except TypeError as err:
        print(f"{argv[0]}: {err}\n{__doc__}", file=sys.stderr)
        return 2
    try:
        result = step(*argv[1:])
    except (StepFailed, subprocess.TimeoutExpired, OSError) as err:
        print(json.dumps({"ok": False, "step": argv[0], "error": str(err)}))
        return 1
    print(json.dumps({"ok": True, "step": argv[0], **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
