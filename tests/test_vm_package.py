"""The packaging proof (issue 26) in one VM with systemd as PID 1: the Debian
package and the wheel go into a guest and out again as qemu-guest-agent does.

The guest has no network: the .deb and its next revision, qemu-guest-agent's
.deb (``apt-get download``; its dependencies are this root's, where the package
is installed, and so the guest's) and a wheelhouse (``pip download``) are made
on the host beforehand, in a directory shared read-write. The launcher's agent
is on a port of its own, through which the test runs the guest's steps
(``tests/support/vm_package_guest.py``); ``org.qemu.guest_agent.0`` is the
packaged agents', which udev starts, and the test talks to them there as a host
does: which agent answers, and the freeze and thaw of a scratch disk that only
the guest mounts (never the guest's root).

In order, one VM for all: qemu-ga, which this root's package starts at boot,
is swapped out by ``apt-get install ./trio-qga.deb``; an upgrade while the host
holds the freeze refuses after its bound, nothing changed; another waits, and
restarts the agent only once the host has thawed; ``apt-get install
./qemu-guest-agent.deb`` swaps back. Then the wheel: a venv, ``trio-qga-service
install`` (ours replaces qemu-ga on the port), a restart refused while frozen,
one done after the thaw, and ``trio-qga-service remove``, which stops ours and
leaves the port to qemu-ga again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.host.vm.background import BackgroundVm
from agent.host.vm.config import Drive, VmConfig
from agent.version import VERSION
from tests.support import vm_package_guest
from tests.support.release import Release
from tests.support.vm import AGENT_PORT, CONTROL_PORT, HostEnd, spawn

pytestmark = [
    pytest.mark.vm,
    pytest.mark.qemu_ga,  # qemu-ga runs in the guest: this machine's package
    pytest.mark.long_under_tcg,  # 17-19 min under TCG: apt, dpkg and Python emulated
    pytest.mark.timeout(3600),  # over the suite's hang backstop (pyproject.toml)
]

ROOT = Path(__file__).resolve().parent.parent
STEPS = ROOT / "tests" / "support" / "vm_package_guest.py"
STEP_DEADLINE = 600.0  # seconds for a step in the background (apt, dpkg under TCG)
ANSWER_DEADLINE = 180.0  # seconds for an agent that runs to answer on the port
SCRATCH = "/mnt/scratch"  # the guest's scratch filesystem, what the host freezes
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"]
BOUND = "3"  # seconds: TRIO_QGA_THAW_WAIT, or --timeout, when the refusal is the point


@dataclass(frozen=True)
class Artifacts:
    share: Path  # shared with the guest, read-write, at the same path
    deb: Path
    next_deb: Path  # the same package, one Debian revision up: an upgrade
    qemu_ga_deb: Path
    wheelhouse: Path  # the wheel and its dependencies


def installed_on_this_root(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, timeout=60
    )
    return result.stdout == "install ok installed"


@pytest.fixture(scope="module")
def artifacts(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    if not installed_on_this_root("qemu-guest-agent") or shutil.which("apt-get") is None:
        pytest.fail(
            "scripts/setup --test installs the qemu-guest-agent package, whose .deb the "
            "guest gets and whose dependencies it has (the guest's root is this one)"
        )
    share = tmp_path_factory.mktemp("package-vm")
    deb = Path(shutil.copy(release.deb, share))
    upgrade = share / "next"
    upgrade.mkdir()
    next_version = vm_package_guest.deb_next(str(deb), str(upgrade / "next.deb"))["version"]
    next_deb = (upgrade / "next.deb").rename(upgrade / f"trio-qga_{next_version}.deb")
    debs = share / "qemu-ga"
    debs.mkdir()
    subprocess.run(
        ["apt-get", "download", "-q", "qemu-guest-agent"],
        cwd=debs,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (qemu_ga_deb,) = debs.glob("qemu-guest-agent_*.deb")
    wheelhouse = share / "wheelhouse"
    subprocess.run(
        [*PIP_DOWNLOAD, "--dest", str(wheelhouse), str(release.wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return Artifacts(share, deb, next_deb, qemu_ga_deb, wheelhouse)


@pytest.fixture(scope="module")
def guest(
    qga_vm_factory: Any, artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundVm]:
    """The VM: systemd as PID 1, the launcher's agent on a port of its own, the
    port for the packaged agents, the share, and an empty disk (/dev/vda)."""
    scratch = tmp_path_factory.mktemp("scratch") / "scratch.img"
    with scratch.open("wb") as image:
        image.truncate(64 << 20)
    config = VmConfig(
        systemd=True,
        agent_port=CONTROL_PORT,
        ports=(AGENT_PORT,),
        shares=(artifacts.share,),
        drives=(Drive(scratch, serial="scratch"),),
        modules=("ext4", "crc32c_generic"),  # mounted on demand; ext4 asks for crc32c
        memory=1536,
    )
    with qga_vm_factory(config) as vm:
        # This root's policy-rc.d (a Docker image's) forbids every start by a
        # package's scripts; a guest image has none.
        vm.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
        # Nor does it have this root's package lists (no network to use them):
        # apt-get then reads only dpkg's status and the local .debs, as offline.
        vm.run(["mount", "-t", "tmpfs", "tmpfs", "/var/lib/apt/lists"])
        step(vm, "scratch", "/dev/vda", SCRATCH)
        yield vm


@pytest.fixture(scope="module")
def port(guest: BackgroundVm) -> Iterator[HostEnd]:
    """The host's end of org.qemu.guest_agent.0, whichever agent has the guest's;
    whatever happens, the scratch disk is thawed at the end."""
    end = HostEnd(guest.sockets[AGENT_PORT])
    end.connect(time.monotonic() + ANSWER_DEADLINE)
    try:
        yield end
    finally:
        if guest.running:
            guest.run(["fsfreeze", "--unfreeze", SCRATCH], check=False)
        end.close()


def step(vm: BackgroundVm, name: str, *args: str) -> dict[str, Any]:
    """A guest step, to its end; its report (it must have succeeded)."""
    result = vm.run(["/usr/bin/python3", str(STEPS), name, *args], check=False)
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert report["ok"], report
    return report


def answer(port: HostEnd, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """What the agent on the port returns to ``command``, once it answers at all."""
    port.sync(time.monotonic() + ANSWER_DEADLINE)
    reply = port.execute(command, arguments)
    assert "return" in reply, reply
    return reply["return"]


def version_on_the_port(port: HostEnd) -> str:
    return str(answer(port, "guest-info")["version"])


def freeze(port: HostEnd) -> None:
    assert answer(port, "guest-fsfreeze-freeze-list", {"mountpoints": [SCRATCH]}) == 1
    assert answer(port, "guest-fsfreeze-status") == "frozen"


def thaw(port: HostEnd) -> None:
    assert answer(port, "guest-fsfreeze-thaw") == 1


def test_the_package_replaces_qemu_ga_and_udev_starts_ours(
    guest: BackgroundVm, port: HostEnd, artifacts: Artifacts
) -> None:
    assert version_on_the_port(port).startswith("7.")  # qemu-ga, started by udev at boot
    report = step(guest, "deb-install", str(artifacts.deb))
    assert report["packages"]["qemu-guest-agent"] in ("deinstall ok config-files", "")
    assert report["hook_owner"] == "trio-qga"
    assert report["conf"]  # /etc/qemu/qemu-ga.conf, written by postinst
    assert report["man_page"]
    assert report["version"] == f"trio-qga {VERSION} (QEMU guest agent protocol)"
    assert version_on_the_port(port) == VERSION


def test_an_upgrade_while_frozen_refuses_after_its_bound(
    guest: BackgroundVm, port: HostEnd, artifacts: Artifacts
) -> None:
    before = step(guest, "status")["units"]["trio-qga"]
    freeze(port)
    report = step(guest, "deb-upgrade", str(artifacts.next_deb), BOUND)
    assert not report["upgraded"]
    assert "not upgraded while the agent has filesystems frozen" in report["output"]
    assert f"the agent reports {SCRATCH} frozen since" in report["output"]
    assert report["package"] == "install ok installed"
    assert report["after"]["pid"] == before["pid"]
    assert answer(port, "guest-fsfreeze-status") == "frozen"  # the same agent, untouched


def test_an_upgrade_restarts_the_agent_only_after_the_thaw(
    guest: BackgroundVm, port: HostEnd, artifacts: Artifacts
) -> None:
    """dpkg -i while frozen, in the background: its preinst waits; the host
    thaws; then the upgrade goes on and postinst restarts the agent."""
    assert answer(port, "guest-fsfreeze-status") == "frozen"
    before = step(guest, "status")["units"]["trio-qga"]
    log = artifacts.share / "upgrade.log"
    argv = ["/usr/bin/python3", str(STEPS), "deb-upgrade", str(artifacts.next_deb), "300"]
    pid = spawn(guest, argv, log)
    deadline = time.monotonic() + STEP_DEADLINE
    waiting = ["pgrep", "-f", "trio-qga-service wait-thawed"]
    while guest.run(waiting, check=False, output=None).shell_status != 0:
        assert not exited(guest, pid), log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(1)
    assert step(guest, "status")["units"]["trio-qga"]["pid"] == before["pid"]
    assert answer(port, "guest-fsfreeze-status") == "frozen"
    thaw(port)
    while not exited(guest, pid):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(1)
    report = json.loads(log.read_text().splitlines()[-1])
    assert report["upgraded"], report["output"]
    assert "waiting up to 300 s for the thaw" in report["output"]
    assert report["restarted"], report
    assert report["after"]["pid"] != before["pid"]
    assert version_on_the_port(port) == VERSION
    assert answer(port, "guest-fsfreeze-status") == "thawed"


def test_qemu_guest_agent_swaps_back_in_one_command(
    guest: BackgroundVm, port: HostEnd, artifacts: Artifacts
) -> None:
    """apt removes trio-qga (prerm stops it) and installs qemu-guest-agent."""
    report = step(guest, "qemu-ga-install", str(artifacts.qemu_ga_deb))
    assert report["packages"]["trio-qga"] in ("deinstall ok config-files", "")
    assert not report["units"]["trio-qga"]["active"]
    assert report["hook_owner"] == "qemu-guest-agent"
    assert version_on_the_port(port).startswith("7.")


def test_the_wheel_route_installs_restarts_once_thawed_and_removes(
    guest: BackgroundVm, port: HostEnd, artifacts: Artifacts
) -> None:
    report = step(guest, "wheel-install", str(artifacts.wheelhouse))
    assert report["second_install"].endswith("everything in place already")
    assert not report["units"]["qemu-ga"]["active"]
    assert version_on_the_port(port) == VERSION
    freeze(port)
    refused = step(guest, "wheel-upgrade", str(artifacts.wheelhouse), BOUND)
    assert refused["exit"] == 1
    assert f"still after {BOUND} s" in refused["output"]
    assert not refused["restarted"]
    assert answer(port, "guest-fsfreeze-status") == "frozen"
    thaw(port)
    restarted = step(guest, "wheel-restart")
    assert restarted["exit"] == 0, restarted["output"]
    assert restarted["restarted"]
    assert version_on_the_port(port) == VERSION
    removed = step(guest, "wheel-remove")
    assert not removed["units"]["trio-qga"]["active"]
    assert removed["conf"]  # the Debian package's postinst wrote it: not the wheel's to remove
    # remove replays the port's event: qemu-guest-agent's rule starts it again.
    assert version_on_the_port(port).startswith("7.")


def exited(vm: BackgroundVm, pid: int) -> bool:
    status: dict[str, Any] = vm.call(
        lambda guest: guest.client.execute("guest-exec-status", {"pid": pid})
    )
    return bool(status["exited"])
