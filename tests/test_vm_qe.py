"""QEMU's own QE checks that need a guest, against trio-qga and qemu-ga side by side.

tp-qemu's ``qemu_guest_agent`` test, the acceptance test QEMU's downstream QE
runs, has checks that change the guest. They run here in ONE VM (the
launcher's, TCG when KVM does not work), with trio-qga on the virtio-serial
port and Debian's qemu-ga 7.2 on the ISA serial line (``tests/support/vm_qe_guest.py``,
started through the launcher's own agent on a port of its own): every check
runs against both, one after the other, and
their answers are compared. Where they differ on purpose (texts that changed in
QEMU 9.1, commands newer than 7.2, qemu-ga's own flaws) the test says so.

The checks: guest-get-fsinfo shows the virtio disk's ``serial`` given on the QEMU
command line; a plain guest-fsfreeze-freeze freezes the guest's disk (a write
waits until the thaw) and, while frozen, file commands, guest-exec and
guest-shutdown answer "disabled"; guest-fsfreeze-freeze-list without
mountpoints, with an invalid one, and with none valid; the fsfreeze hook's log
lines; guest-set-time (the clock and the RTC move) and an invalid time refused;
guest-set-user-password plain and crypted on a scratch user, and the request in
both -v logs (the password only in qemu-ga's); guest-set-vcpus; the
"operation-failed" answer of guest-set-memory-blocks for a block that cannot go
offline; guest-network-get-interfaces after an address change; guest-get-load
rising under load (trio-qga only: qemu-ga 7.2 has no guest-get-load).

The VM has a virtio disk with a ``serial`` (an ext4 image made here); the guest
starts udev, from which both agents read the serial. There is no network card
(the guest has ``lo`` only), so the address change is on ``lo``.
Nothing here touches the host: the freezes, clock, users, CPUs and memory are
the guest's, and the freeze guard in the guest allows only the guest's disk.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.host.vm import Drive
from agent.host.vm.background import BackgroundVm
from tests.support.reference import qemu_ga_binary
from tests.support.vm import AGENT_PORT, PORTS, ROOT, HostEnd, agents_under_test, spawn

# Every check runs against both agents.
pytestmark = [pytest.mark.vm, pytest.mark.qemu_ga]

SERIAL = "QGA-QE-0001"
MOUNTPOINT = "/mnt/qe"
DISK = "/dev/vda"
UDEVD = "/lib/systemd/systemd-udevd"
BOOT_DEADLINE = 300.0  # TCG on a busy 2-core host: udev, then import trio
AGENTS = ("trio", "qemu")
Y2031 = 1_924_992_000  # 2031-01-01T00:00:00Z
Y2100 = 4_102_444_800  # outside qemu-ga's 1970..2069
USER = "qeuser"
CRYPTED = "$6$trioqga$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./"


def require(condition: bool, message: str) -> None:
    """Fail under CI (which installs everything), skip loudly elsewhere."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Guest:
    ends: dict[str, HostEnd]
    machine: BackgroundVm
    output: Path

    def call(self, agent: str, name: str, arguments: dict[str, Any] | None = None) -> Any:
        reply = self.ends[agent].execute(name, arguments)
        assert "return" in reply, f"{agent} {name}: {reply}"
        return reply["return"]

    def error(self, agent: str, name: str, arguments: dict[str, Any] | None = None) -> Any:
        reply = self.ends[agent].execute(name, arguments)
        assert "error" in reply, f"{agent} {name}: {reply}"
        return reply["error"]

    def sh(self, script: str, via: str = "trio") -> str:
        """Run ``script`` in the guest through ``via``'s guest-exec; its output."""
        pid = self.call(
            via, "guest-exec", {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True}
        )["pid"]
        deadline = time.monotonic() + 60
        while not (status := self.call(via, "guest-exec-status", {"pid": pid}))["exited"]:
            assert time.monotonic() < deadline, f"{script!r} still running"
            time.sleep(0.05)
        output = base64.b64decode(status.get("out-data", "")).decode()
        output += base64.b64decode(status.get("err-data", "")).decode()
        assert status.get("exitcode") == 0, f"{script!r} failed: {status} {output}"
        return output


@pytest.fixture(scope="module")
def guest(
    tmp_path_factory: pytest.TempPathFactory, qga_vm_factory: Callable[..., BackgroundVm]
) -> Iterator[Guest]:
    require(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 missing (e2fsprogs)")
    require(Path(UDEVD).exists(), f"{UDEVD} missing: scripts/setup --test installs udev")
    qemu_ga = qemu_ga_binary()
    work = tmp_path_factory.mktemp("vm-qe")
    image = work / "disk.img"
    with open(image, "wb") as disk:
        disk.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    config = agents_under_test(
        drives=(Drive(image, serial=SERIAL),),
        modules=("ext4", "crc32c_generic"),  # mounted on demand; ext4 asks for crc32c
    )
    settings = {
        "disk": DISK,
        "mountpoint": MOUNTPOINT,
        "virtio": PORTS["virtio"],
        "isa": PORTS["isa"],
        "qemu_ga": str(qemu_ga),
    }
    output = work / "vm_qe_guest.out"
    guest_side = ROOT / "tests" / "support" / "vm_qe_guest.py"
    with qga_vm_factory(config) as machine:
        spawn(
            machine,
            [sys.executable, str(guest_side), json.dumps(settings)],
            output,
            env=[f"TRIO_QGA_FREEZE_ALLOW={MOUNTPOINT}"],  # the guard, in the guest: the disk
        )
        ends = {"trio": HostEnd(machine.sockets[AGENT_PORT]), "qemu": HostEnd(machine.isa_socket)}
        try:
            deadline = time.monotonic() + BOOT_DEADLINE
            for end in ends.values():
                end.connect(deadline)
                end.sync(deadline)
            yield Guest(ends, machine, output)
        finally:
            for end in ends.values():
                if end.sock is not None:
                    end.close()


def frozen_state(guest: Guest, agent: str) -> str:
    return str(guest.call(agent, "guest-fsfreeze-status"))


@pytest.fixture
def thawed(guest: Guest) -> Iterator[None]:
    """Whatever a check does, it leaves no agent frozen."""
    yield
    for agent in AGENTS:
        if frozen_state(guest, agent) == "frozen":
            guest.call(agent, "guest-fsfreeze-thaw")


def disabled(agent: str, name: str) -> dict[str, str]:
    """The reply to a command disabled while frozen: QEMU 9.1's text for trio-qga."""
    reason = "the command is not allowed" if agent == "trio" else "the agent is in frozen state"
    return {"class": "CommandNotFound", "desc": f"Command {name} has been disabled: {reason}"}


def test_fsinfo_shows_the_virtio_serial(guest: Guest) -> None:
    for agent in AGENTS:
        [fs] = [
            fs for fs in guest.call(agent, "guest-get-fsinfo") if fs["mountpoint"] == MOUNTPOINT
        ]
        [disk] = fs["disk"]
        assert disk["serial"] == SERIAL, agent
        assert disk["bus-type"] == "virtio", agent
        assert disk["dev"] == DISK, agent
        assert fs["type"] == "ext4", agent


@pytest.mark.usefixtures("thawed")
def test_freeze_then_file_commands_and_shutdown_are_disabled(guest: Guest) -> None:
    for agent in AGENTS:
        assert guest.call(agent, "guest-fsfreeze-freeze") == 1, agent  # the disk: all there is
        assert frozen_state(guest, agent) == "frozen"
        # The disk really is frozen: a write there waits until the thaw. It runs
        # through the other agent (this one refuses guest-exec while frozen).
        other = "qemu" if agent == "trio" else "trio"
        write = {"path": "/bin/sh", "arg": ["-c", f"echo {agent} > {MOUNTPOINT}/{agent}"]}
        writer = guest.call(other, "guest-exec", write)
        time.sleep(2)
        assert not guest.call(other, "guest-exec-status", writer)["exited"]
        for name, arguments in [
            ("guest-file-open", {"path": f"{MOUNTPOINT}/x", "mode": "w"}),
            ("guest-shutdown", None),
            ("guest-fsfreeze-freeze", None),
            ("guest-exec", {"path": "/bin/true"}),
        ]:
            assert guest.error(agent, name, arguments) == disabled(agent, name), agent
        assert guest.call(agent, "guest-fsfreeze-thaw") == 1, agent
        assert frozen_state(guest, agent) == "thawed"
        deadline = time.monotonic() + 60
        while not guest.call(other, "guest-exec-status", writer)["exited"]:
            assert time.monotonic() < deadline, "the write never finished after the thaw"
            time.sleep(0.1)
        assert guest.sh(f"cat {MOUNTPOINT}/{agent}") == f"{agent}\n"


@pytest.mark.usefixtures("thawed")
def test_freeze_list_without_mountpoints_and_with_invalid_ones(guest: Guest) -> None:
    for agent in AGENTS:
        assert guest.call(agent, "guest-fsfreeze-freeze-list") == 1, agent
        assert guest.call(agent, "guest-fsfreeze-thaw") == 1, agent
        # tp-qemu's ["/", "/invalid"]: the guest's / (an overlay) cannot be frozen either.
        mixed = {"mountpoints": [MOUNTPOINT, "/invalid"]}
        assert guest.call(agent, "guest-fsfreeze-freeze-list", mixed) == 1, agent
        assert guest.call(agent, "guest-fsfreeze-thaw") == 1, agent
        nothing = {"mountpoints": ["/", "/invalid"]}
        guest.sh(f": > /run/qe/{agent}-hook.log")
        assert guest.call(agent, "guest-fsfreeze-freeze-list", nothing) == 0, agent
        assert frozen_state(guest, agent) == "thawed"
    # Where they differ: qemu-ga runs the freeze hook before it finds nothing to
    # freeze, and never the thaw hook; trio-qga runs neither.
    assert hook_log(guest, "trio") == []
    assert hook_log(guest, "qemu") == ["qemu fsfreeze hook: freeze"]


def test_fsfreeze_hook_log_lines(guest: Guest) -> None:
    """The hook runs with freeze before the freeze and with thaw after the thaw."""
    for agent in AGENTS:
        guest.sh(f": > /run/qe/{agent}-hook.log")
        assert guest.call(agent, "guest-fsfreeze-freeze") == 1
        assert guest.call(agent, "guest-fsfreeze-thaw") == 1
        assert hook_log(guest, agent) == [
            f"{agent} fsfreeze hook: {verb}" for verb in ("freeze", "thaw")
        ]


def hook_log(guest: Guest, agent: str) -> list[str]:
    lines = guest.sh(f"cat /run/qe/{agent}-hook.log").splitlines()
    return [line.split(" ", 1)[1] for line in lines]  # without the time


def test_set_time_and_an_invalid_time(guest: Guest) -> None:
    for offset, agent in enumerate(AGENTS):
        moment = Y2031 + offset * 86400
        assert guest.call(agent, "guest-set-time", {"time": moment * 10**9}) == {}, agent
        assert moment <= int(guest.sh("date +%s")) < moment + 120, agent
        assert moment <= int(guest.sh('date -d "$(hwclock -r)" +%s')) < moment + 120, agent
    refused = {
        agent: guest.error(agent, "guest-set-time", {"time": Y2100 * 10**9}) for agent in AGENTS
    }
    assert refused["trio"] == {"class": "GenericError", "desc": "Invalid time"}
    assert refused["qemu"] == refused["trio"]
    assert int(guest.sh("date +%s")) < Y2100  # refused before the clock moved
    assert abs(time.time() - Y2031) > 86400  # and this host's clock never moved


def test_set_user_password_plain_and_crypted(guest: Guest) -> None:
    # No subordinate ids: /etc/subuid is the host's, which other tests may be changing.
    guest.sh(f"useradd -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 -m -s /bin/sh {USER}")
    shadow = f"grep '^{USER}:' /etc/shadow | cut -d: -f2"
    for agent in AGENTS:
        before = guest.sh(shadow).strip()
        password = base64.b64encode(f"{agent} pass".encode()).decode()
        arguments = {"username": USER, "password": password, "crypted": False}
        assert guest.call(agent, "guest-set-user-password", arguments) == {}
        hashed = guest.sh(shadow).strip()
        assert hashed.startswith("$"), agent
        assert hashed != before, agent
        crypted = base64.b64encode(CRYPTED.encode()).decode()
        arguments = {"username": USER, "password": crypted, "crypted": True}
        assert guest.call(agent, "guest-set-user-password", arguments) == {}
        assert guest.sh(shadow).strip() == CRYPTED, agent
        guest.sh(f"usermod -p '!' {USER}")
        # Both -v logs show the request (tp-qemu's check); only qemu-ga's shows the password.
        received = read_data(guest.sh(f"tr -d '\\377' < /run/qe/{agent}.log"))
        assert "guest-set-user-password" in received, agent
        assert (password in received) is (agent == "qemu"), agent
    assert '"password": "<redacted>"' in guest.sh("cat /run/qe/trio.log")


def read_data(log: str) -> str:
    """What the ``read data, count: N, data: ...`` lines of an agent's log say it read,
    joined (qemu-ga logs each read of a serial line, often a few bytes)."""
    record = r"\n(?:[\d.]+: |\d{4}-\d\d-\d\d )"  # the next line of qemu-ga's or ours
    pieces = re.findall(rf"read data, count: \d+, data: (.*?)(?={record}|\Z)", log, re.S)
    return "".join(pieces)


def test_set_vcpus(guest: Guest) -> None:
    for agent in AGENTS:
        vcpus = guest.call(agent, "guest-get-vcpus")  # qemu-ga lists them last first
        assert sorted(cpu["logical-id"] for cpu in vcpus) == [0, 1], agent
        off = {"vcpus": [{"logical-id": 1, "online": False}]}
        assert guest.call(agent, "guest-set-vcpus", off) == 1, agent
        assert guest.sh("cat /sys/devices/system/cpu/cpu1/online").strip() == "0", agent
        on = {"vcpus": [{"logical-id": 1, "online": True}]}
        assert guest.call(agent, "guest-set-vcpus", on) == 1, agent
        assert guest.sh("nproc").strip() == "2", agent


def test_set_memory_blocks_reports_a_block_that_cannot_go_offline(guest: Guest) -> None:
    """Block 0 holds the kernel: offlining it fails, reported per block as operation-failed."""
    replies = {}
    for agent in AGENTS:
        blocks = guest.call(agent, "guest-get-memory-blocks")
        first = min(block["phys-index"] for block in blocks)
        replies[agent] = guest.call(
            agent, "guest-set-memory-blocks", {"mem-blks": [{"phys-index": first, "online": False}]}
        )
        assert guest.sh(f"cat /sys/devices/system/memory/memory{first}/online").strip() == "1"
    assert replies["trio"] == replies["qemu"]
    [answer] = replies["trio"]
    assert answer["response"] == "operation-failed"
    assert answer["error-code"] > 0


def test_network_interfaces_after_an_address_change(guest: Guest) -> None:
    guest.sh("ip addr add 192.0.2.7/24 dev lo")
    try:
        for agent in AGENTS:
            [lo] = [
                i for i in guest.call(agent, "guest-network-get-interfaces") if i["name"] == "lo"
            ]
            assert {"ip-address": "192.0.2.7", "ip-address-type": "ipv4", "prefix": 24} in lo[
                "ip-addresses"
            ], agent
    finally:
        guest.sh("ip addr del 192.0.2.7/24 dev lo")


def test_load_rises_under_load(guest: Guest) -> None:
    """qemu-ga 7.2 predates guest-get-load (QEMU 10.0)."""
    assert guest.error("qemu", "guest-get-load")["class"] == "CommandNotFound"
    before = guest.call("trio", "guest-get-load")["load1m"]
    busy = "for i in 1 2 3; do timeout 60 sh -c 'while :; do :; done' >/dev/null 2>&1 &"
    guest.sh(busy + " echo $! >> /run/qe/busy; done")
    deadline = time.monotonic() + 60
    while (load := guest.call("trio", "guest-get-load"))["load1m"] < before + 0.3:
        assert time.monotonic() < deadline, f"load1m stayed at {load} (was {before})"
        time.sleep(1)
    guest.sh("kill $(cat /run/qe/busy); rm /run/qe/busy")
