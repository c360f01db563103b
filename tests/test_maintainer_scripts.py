"""The Debian package's maintainer scripts (``debian/trio-qga.{preinst,postinst,
prerm,postrm}``): what they run, and above all that an upgrade or a removal never
restarts or stops an agent that reports filesystems frozen before the thaw, or
refuses once its wait is over.

The seam: each script names the helper it asks in one line,
``SERVICE=/usr/lib/trio-qga/bin/trio-qga-service``. A copy of the script has that
line point at a stand-in: a scripted answer (frozen or not), or this checkout's
real ``trio-qga-service``, which waits on a frozen marker in the test's directory.
systemctl, deb-systemd-invoke, udevadm and policy-rc.d are stand-ins too, which
record their calls. The scripts run as root in a mount namespace of their own
where /etc/qemu, /var/lib, /var/cache, /usr/share and /usr/sbin are directories of
the test's and /run (and /dev, for the port) a tmpfs: nothing of the machine's
changes. debhelper's snippets (``#DEBHELPER#``) are left out: the built package's
scripts are ``tests/test_packaging_build.py``'s.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import service
from agent.system.fsfreeze.marker import FrozenMarker

ROOT = Path(__file__).resolve().parent.parent
DEBIAN = ROOT / "debian"
SERVICE_LINE = "SERVICE=/usr/lib/trio-qga/bin/trio-qga-service"
TIMEOUT = 60  # seconds any script may take here
NAMESPACE = ["unshare", "--mount", "--propagation", "private"]

SCRIPTED_SERVICE = """#!/bin/sh
echo "trio-qga-service $*" >> "$CALLS"
if [ -e "$FROZEN" ]; then echo "the agent reports /data frozen" >&2; exit 1; fi
"""
# This checkout's trio-qga-service, which reads the frozen marker where
# /etc/qemu/qemu-ga.conf's statedir= says.
REAL_SERVICE = """#!/bin/sh
echo "trio-qga-service $*" >> "$CALLS"
exec "$PYTHON" -m agent.daemon.service "$@"
"""
SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$CALLS"
case "$*" in *is-active*) [ -e "$ACTIVE" ];; esac
"""
# A restart or a stop says if the marker was still there when it came.
RECORDING = """#!/bin/sh
frozen=""
if [ -n "$MARKER" ] && [ -e "$MARKER" ]; then frozen=" WHILE FROZEN"; fi
echo "$(basename "$0") $*$frozen" >> "$CALLS"
"""
POLICY_FORBIDS = '#!/bin/sh\necho "policy-rc.d $*" >> "$CALLS"\nexit 101\n'

# What the scripts see as the machine's: a directory of the test's each.
BOUND = ("/etc/qemu", "/var/lib", "/var/cache", "/usr/share", "/usr/sbin")


@dataclass
class Machine:
    """The test's stand-in for the machine the package is installed on."""

    work: Path

    def path(self, machine_path: str) -> Path:
        """Where ``machine_path`` (under one of :data:`BOUND`) is, for the test."""
        for bound in BOUND:
            if machine_path == bound or machine_path.startswith(f"{bound}/"):
                return (
                    self.work / bound.strip("/").replace("/", "-") / machine_path[len(bound) + 1 :]
                )
        raise ValueError(f"{machine_path} is the machine's own")

    @property
    def calls(self) -> list[str]:
        return (self.work / "calls").read_text().splitlines()

    @property
    def state(self) -> Path:
        """The agent's state directory, as qemu-ga.conf names it."""
        return self.work / "state"

    def configure(self, text: str) -> None:
        conf = self.path("/etc/qemu/qemu-ga.conf")
        conf.write_text(text)

    def start(
        self,
        name: str,
        *args: str,
        real_service: bool = False,
        frozen: bool = False,
        active: bool = True,
        port: bool = False,
        **env: str,
    ) -> subprocess.Popen[str]:
        """debian/trio-qga.NAME ARGS started in the namespace, systemd "running"."""
        script = (DEBIAN / f"trio-qga.{name}").read_text()
        if name != "postrm":  # which runs once the agent is gone, and asks nothing
            assert script.count(f"\n{SERVICE_LINE}\n") == 1, "the seam is gone"
        bin_dir = self.work / "bin"
        (bin_dir / "trio-qga-service").write_text(
            REAL_SERVICE if real_service else SCRIPTED_SERVICE
        )
        copy = self.work / name
        copy.write_text(script.replace(SERVICE_LINE, f"SERVICE={bin_dir}/trio-qga-service"))
        (self.work / "calls").write_text("")
        for flag, wanted in (("frozen", frozen), ("active", active)):
            (self.work / flag).unlink(missing_ok=True)
            if wanted:
                (self.work / flag).touch()
        binds = " && ".join(
            f"mount --bind {self.path(bound)} {bound}" for bound in BOUND if bound != "/usr/sbin"
        )
        setup = [
            "mount -t tmpfs none /run",
            "mkdir -p /run/systemd/system",
            binds,
        ]
        if port:  # a /dev of the namespace's own, with the port in it
            setup += [
                "mount -t tmpfs none /dev",
                "mknod -m 666 /dev/null c 1 3",
                "mkdir /dev/virtio-ports",
                "touch /dev/virtio-ports/org.qemu.guest_agent.0",
            ]
        setup += [f"mount --bind {self.path('/usr/sbin')} /usr/sbin", 'exec sh "$@"']
        return subprocess.Popen(
            [*NAMESPACE, "sh", "-c", " && ".join(setup), "sh", str(copy), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
                "CALLS": str(self.work / "calls"),
                "FROZEN": str(self.work / "frozen"),
                "ACTIVE": str(self.work / "active"),
                "MARKER": str(FrozenMarker(str(self.state)).path),
                "PYTHON": sys.executable,
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",  # "waiting ..." is seen while it waits
                **env,
            },
        )

    def run(self, name: str, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        """:meth:`start`, to its end."""
        process = self.start(name, *args, **options)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    if os.geteuid() != 0 or shutil.which("unshare") is None or not Path("/etc/qemu").is_dir():
        message = (
            "the maintainer scripts run as root, in a mount namespace (unshare) over "
            "/etc/qemu (qemu-guest-agent's, which scripts/setup --test installs)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    here = Machine(tmp_path)
    for bound in BOUND:
        here.path(bound).mkdir(parents=True)
    here.state.mkdir()
    (tmp_path / "bin").mkdir()
    for name, text in {
        "systemctl": SYSTEMCTL,
        "deb-systemd-invoke": RECORDING,
        "udevadm": RECORDING,
    }.items():
        (tmp_path / "bin" / name).write_text(text)
    (tmp_path / "bin" / "trio-qga-service").touch()
    for path in (tmp_path / "bin").iterdir():
        path.chmod(0o755)
    template = here.path("/usr/share/trio-qga/qemu-ga.conf")
    template.parent.mkdir()
    shutil.copy(ROOT / "agent/data/qemu-ga.conf", template)
    here.configure(f"[general]\nstatedir={here.state}\n")
    return here


def wait_for_output(process: subprocess.Popen[str], text: str) -> str:
    """What ``process`` printed up to ``text`` (which it prints before it waits)."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + TIMEOUT
    while text not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(left, 0))
        assert ready, f"no {text!r} within {TIMEOUT} s; printed {seen!r}"
        line = process.stdout.readline()
        assert line, f"ended ({process.wait()}) without {text!r}; printed {seen!r}"
        seen += line
    return seen


WAIT = "trio-qga-service wait-thawed --if-running --timeout 60"
AGENTS = " ".join(service.AGENTS)
STOP = f"deb-systemd-invoke stop {' '.join(service.OPTIONAL_UNITS)} trio-qga.service"


# ---------------------------------------------- decisions, scripted answer --
def test_postinst_restarts_a_running_agent_once_thawed(machine: Machine) -> None:
    result = machine.run("postinst", "configure", "0.0.9-1")
    assert result.returncode == 0, result.stderr
    assert machine.calls == [
        "systemctl --system daemon-reload",
        WAIT,
        f"deb-systemd-invoke try-restart {AGENTS}",
        "systemctl --quiet is-active trio-qga.service",
    ]


def test_postinst_refuses_to_restart_while_frozen(machine: Machine) -> None:
    result = machine.run("postinst", "configure", "0.0.9-1", frozen=True)
    assert result.returncode == 1
    assert "the agent reports /data frozen" in result.stderr
    assert "dpkg --configure -a" in result.stderr
    assert not any("restart" in call for call in machine.calls)


def test_the_wait_is_the_administrator_s_to_set(machine: Machine) -> None:
    machine.run("postinst", "configure", "0.0.9-1", TRIO_QGA_THAW_WAIT="300")
    assert "trio-qga-service wait-thawed --if-running --timeout 300" in machine.calls


def test_postinst_leaves_a_stopped_agent_to_udev_without_the_port(machine: Machine) -> None:
    result = machine.run("postinst", "configure", "", active=False)
    assert result.returncode == 0, result.stderr
    assert not any("udevadm" in call for call in machine.calls)
    assert machine.calls[-1] == "systemctl --quiet is-active trio-qga.service"


def test_postinst_replays_the_port_s_event_unless_policy_rc_d_forbids(machine: Machine) -> None:
    """The port is there and no agent runs (a first install, or qemu-ga's was
    removed): udev's replayed event starts ours, unless starts are forbidden
    (a chroot, a Docker build), as deb-systemd-invoke would be told."""
    result = machine.run("postinst", "configure", "", active=False, port=True)
    assert result.returncode == 0, result.stderr
    trigger = [call for call in machine.calls if call.startswith("udevadm trigger")]
    assert trigger == [
        "udevadm trigger --action=add --subsystem-match=virtio-ports "
        "--attr-match=name=org.qemu.guest_agent.0"
    ]
    policy = machine.path("/usr/sbin/policy-rc.d")
    policy.write_text(POLICY_FORBIDS)
    policy.chmod(0o755)
    result = machine.run("postinst", "configure", "", active=False, port=True)
    assert result.returncode == 0, result.stderr
    assert "policy-rc.d trio-qga.service start" in machine.calls
    assert not any(call.startswith("udevadm") for call in machine.calls)


def test_preinst_refuses_an_upgrade_while_frozen(machine: Machine) -> None:
    result = machine.run("preinst", "upgrade", "0.0.9-1", frozen=True)
    assert result.returncode == 1
    assert "nothing was changed" in result.stderr
    assert machine.calls == [WAIT]
    assert machine.run("preinst", "upgrade", "0.0.9-1").returncode == 0
    result = machine.run("preinst", "install", frozen=True)
    assert result.returncode == 0
    assert machine.calls == []  # a first install has no agent of ours to ask


def test_prerm_refuses_a_removal_while_frozen(machine: Machine) -> None:
    result = machine.run("prerm", "remove", frozen=True)
    assert result.returncode == 1
    assert "not removed" in result.stderr
    assert machine.calls == [WAIT]
    result = machine.run("prerm", "remove")
    assert result.returncode == 0
    assert machine.calls == [WAIT, STOP]
    result = machine.run("prerm", "upgrade", "0.2.0-1", frozen=True)
    assert result.returncode == 0  # the upgrade's own scripts wait
    assert machine.calls == []


# ----------------------------------------- the real wait on a frozen marker --
def test_an_upgrade_restarts_the_agent_only_after_the_thaw(machine: Machine) -> None:
    """postinst, with this checkout's trio-qga-service: while the marker is there
    it waits; the host thaws (the marker goes); only then the restart."""
    marker = FrozenMarker(str(machine.state))
    marker.write(["/data"])
    process = machine.start("postinst", "configure", "0.0.9-1", real_service=True)
    try:
        said = wait_for_output(process, "waiting up to 60 s for the thaw")
        assert "the agent reports /data frozen since" in said
        assert not any("deb-systemd-invoke" in call for call in machine.calls)
        marker.remove()  # the host's guest-fsfreeze-thaw
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, stdout + stderr
    assert f"deb-systemd-invoke try-restart {AGENTS}" in machine.calls  # not WHILE FROZEN


@pytest.mark.parametrize(
    ("name", "args", "refusal"),
    [
        ("preinst", ["upgrade", "0.0.9-1"], "not upgraded while"),
        ("postinst", ["configure", "0.0.9-1"], "not restarted while"),
        ("prerm", ["remove"], "not removed while"),
    ],
    ids=["preinst", "postinst", "prerm"],
)
def test_after_its_bound_the_script_refuses_with_the_reason(
    machine: Machine, name: str, args: list[str], refusal: str
) -> None:
    marker = FrozenMarker(str(machine.state))
    marker.write(["/data", "/srv"])
    result = machine.run(name, *args, real_service=True, TRIO_QGA_THAW_WAIT="0.3")
    assert result.returncode == 1
    assert "waiting up to 0.3 s for the thaw" in result.stdout
    assert "the agent reports /data, /srv frozen since" in result.stderr
    assert "still after 0.3 s" in result.stderr
    assert refusal in result.stderr
    assert not any(call.startswith("deb-systemd-invoke") for call in machine.calls)
    assert marker.exists()


def test_qemu_ga_s_marker_holds_the_removal_too(machine: Machine) -> None:
    """qemu-ga's empty marker (swapping while qemu-ga had frozen) says "frozen"."""
    (machine.state / "qga.state.isfrozen").write_bytes(b"")
    result = machine.run("prerm", "remove", real_service=True, TRIO_QGA_THAW_WAIT="0.1")
    assert result.returncode == 1
    assert "the agent reports filesystems frozen since" in result.stderr


def test_a_stopped_agent_is_not_waited_for(machine: Machine) -> None:
    """It thaws nothing when stopped: a marker left by a crash holds nothing up."""
    FrozenMarker(str(machine.state)).write(["/data"])
    result = machine.run("prerm", "remove", real_service=True, active=False)
    assert result.returncode == 0, result.stderr
    assert "waiting" not in result.stdout
    assert machine.calls[-1] == f"{STOP} WHILE FROZEN"


# ------------------------------------------------ /etc/qemu/qemu-ga.conf --
def test_postinst_writes_the_configuration_only_where_there_is_none(machine: Machine) -> None:
    conf = machine.path("/etc/qemu/qemu-ga.conf")
    conf.unlink()
    assert machine.run("postinst", "configure", "", active=False).returncode == 0
    assert conf.read_text() == (ROOT / "agent/data/qemu-ga.conf").read_text()
    assert machine.path("/var/lib/trio-qga/qemu-ga.conf.md5sum").is_file()
    conf.write_text("[general]\nverbose=true\n")  # the administrator's now
    assert machine.run("postinst", "configure", "0.1.0-1", active=False).returncode == 0
    assert conf.read_text() == "[general]\nverbose=true\n"


def test_purge_removes_the_configuration_only_as_postinst_wrote_it(machine: Machine) -> None:
    conf = machine.path("/etc/qemu/qemu-ga.conf")
    conf.unlink()
    machine.path("/var/cache/trio-qga").mkdir()
    assert machine.run("postinst", "configure", "", active=False).returncode == 0
    assert machine.run("postrm", "remove").returncode == 0
    assert conf.exists()  # removal keeps configuration
    assert machine.run("postrm", "purge").returncode == 0
    assert not conf.exists()
    assert not machine.path("/var/lib/trio-qga").exists()
    assert not machine.path("/var/cache/trio-qga").exists()


def test_purge_keeps_a_changed_or_a_foreign_configuration(machine: Machine) -> None:
    conf = machine.path("/etc/qemu/qemu-ga.conf")
    conf.unlink()
    assert machine.run("postinst", "configure", "", active=False).returncode == 0
    conf.write_text("[general]\nverbose=true\n")
    assert machine.run("postrm", "purge").returncode == 0
    assert conf.read_text() == "[general]\nverbose=true\n"
    # One written for qemu-ga before we came: postinst records no checksum of it.
    assert machine.run("postinst", "configure", "", active=False).returncode == 0
    assert machine.run("postrm", "purge").returncode == 0
    assert conf.read_text() == "[general]\nverbose=true\n"
