"""The commands that change a system, for real, inside one VM.

A throw-away VM of this machine (``qga_vm``, for this module alone: its root
read-only under a tmpfs overlay, every write gone at power-off) runs trio-qga
on its virtio-serial port. From the host, over the port: guest-exec runs
commands in the guest (and checks the others' effects), guest-set-time moves
the guest clock and its RTC, guest-set-user-password changes a fresh user's
password, the ssh key commands write that user's authorized_keys,
guest-set-vcpus takes CPU 1 off line, and guest-shutdown really powers the VM
off (the guest's busybox init: ``poweroff -f``). Nothing here touches the host.

The tests share the VM and run in order; the last one powers it off.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.host.vm.background import BackgroundVm
from tests.support.clients import SocketClient

pytestmark = [pytest.mark.vm, pytest.mark.qga_vm(scope="module", cpus=2)]
USER = "qgatest"
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIVmOne one@host"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQVmTwo two@host"
Y2030 = 1_893_456_000  # 2030-01-01T00:00:00Z
CRYPTED = "$6$trioqga$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./"
POWER_OFF_TIMEOUT = 120.0


@dataclass
class Vm:
    machine: BackgroundVm
    client: SocketClient
    timings: dict[str, float] = field(default_factory=dict)

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        reply = self.client.execute(name, arguments)
        assert "return" in reply, f"{name}: {reply}"
        return reply["return"]

    def sh(self, script: str) -> tuple[int, str]:
        """Run ``script`` in the guest with guest-exec; its exit code and output."""
        pid = self.call(
            "guest-exec",
            {"path": "/bin/sh", "arg": ["-c", script], "capture-output": "merged"},
        )["pid"]
        deadline = time.monotonic() + 60
        while True:
            status = self.call("guest-exec-status", {"pid": pid})
            if status["exited"]:
                output = base64.b64decode(status.get("out-data", "")).decode()
                return status.get("exitcode", -1), output
            assert time.monotonic() < deadline, f"{script!r} still running"
            time.sleep(0.05)

    def check(self, script: str) -> str:
        code, output = self.sh(script)
        assert code == 0, f"{script!r} failed ({code}): {output}"
        return output


@pytest.fixture
def vm(qga_vm: BackgroundVm) -> Iterator[Vm]:
    """This module's VM (the marker's scope), through a connection of this test's."""
    client = SocketClient(qga_vm.qga_socket, timeout=60)
    try:
        client.resync(1)
        machine = Vm(qga_vm, client)
        if qga_vm.timings is not None:
            machine.timings["first reply"] = qga_vm.timings.total
        yield machine
    finally:
        client.close()


def test_exec_runs_in_the_guest(vm: Vm) -> None:
    assert vm.check("cat /proc/1/comm").strip() != "systemd"  # busybox init, not this host's
    assert int(vm.check("nproc").strip()) == 2


def test_set_time_moves_the_guest_clock_and_its_rtc(vm: Vm) -> None:
    assert vm.call("guest-set-time", {"time": Y2030 * 10**9}) == {}
    guest_now = int(vm.check("date +%s"))
    assert Y2030 <= guest_now < Y2030 + 120
    # Clock elsewhere, then back from the RTC that guest-set-time wrote (hwclock -w / -s).
    vm.check("date -s @1000000000 >/dev/null")
    assert int(vm.check("date +%s")) < Y2030
    assert vm.call("guest-set-time") == {}
    assert Y2030 <= int(vm.check("date +%s")) < Y2030 + 120
    assert abs(time.time() - Y2030) > 86400  # and the host's clock is untouched


def test_set_user_password(vm: Vm) -> None:
    vm.check(f"useradd -m -s /bin/sh {USER}")
    shadow = f"grep '^{USER}:' /etc/shadow | cut -d: -f2"
    before = vm.check(shadow).strip()
    password = base64.b64encode(b"n3w pass").decode()
    vm.call("guest-set-user-password", {"username": USER, "password": password, "crypted": False})
    hashed = vm.check(shadow).strip()
    assert hashed != before
    assert hashed.startswith("$")
    crypted = base64.b64encode(CRYPTED.encode()).decode()
    vm.call("guest-set-user-password", {"username": USER, "password": crypted, "crypted": True})
    assert vm.check(shadow).strip() == CRYPTED
    reply = vm.client.execute(
        "guest-set-user-password",
        {"username": "nosuchuser", "password": password, "crypted": False},
    )
    assert reply["error"]["desc"].startswith("child process has failed to set user password")


def test_ssh_keys_belong_to_the_user(vm: Vm) -> None:
    vm.call("guest-ssh-add-authorized-keys", {"username": USER, "keys": [KEY1, KEY2]})
    listing = vm.check(
        f"stat -c '%U %G %a %n' /home/{USER}/.ssh /home/{USER}/.ssh/authorized_keys"
    ).splitlines()
    assert listing == [
        f"{USER} {USER} 700 /home/{USER}/.ssh",
        f"{USER} {USER} 600 /home/{USER}/.ssh/authorized_keys",
    ]
    assert vm.call("guest-ssh-get-authorized-keys", {"username": USER}) == {"keys": [KEY1, KEY2]}
    vm.call("guest-ssh-remove-authorized-keys", {"username": USER, "keys": [KEY1]})
    assert vm.check(f"cat /home/{USER}/.ssh/authorized_keys") == f"{KEY2}\n"


def test_a_vcpu_goes_offline(vm: Vm) -> None:
    vcpus = vm.call("guest-get-vcpus")
    assert [cpu["logical-id"] for cpu in vcpus] == [0, 1]
    assert all(cpu["online"] for cpu in vcpus)
    assert vm.call("guest-set-vcpus", {"vcpus": [{"logical-id": 1, "online": False}]}) == 1
    assert vm.check("cat /sys/devices/system/cpu/cpu1/online").strip() == "0"
    assert vm.check("nproc").strip() == "1"
    assert vm.call("guest-get-vcpus")[1] == {"logical-id": 1, "online": False, "can-offline": True}
    assert vm.call("guest-set-vcpus", {"vcpus": [{"logical-id": 1, "online": True}]}) == 1
    assert vm.check("nproc").strip() == "2"


def test_memory_blocks_are_read(vm: Vm) -> None:
    blocks = vm.call("guest-get-memory-blocks")
    assert blocks
    assert all(block["online"] for block in blocks)
    size = vm.call("guest-get-memory-block-info")["size"]
    assert size > 0
    assert size & (size - 1) == 0  # a power of two
    first = blocks[0]
    assert vm.call(
        "guest-set-memory-blocks",
        {"mem-blks": [{"phys-index": first["phys-index"], "online": True}]},
    ) == [{"phys-index": first["phys-index"], "response": "success"}]


def test_shutdown_powers_the_vm_off(vm: Vm) -> None:
    vm.client.send(b'{"execute":"guest-shutdown"}')
    sent = time.monotonic()
    assert vm.machine.wait_stopped(POWER_OFF_TIMEOUT), "the VM still runs"
    took = time.monotonic() - sent
    console = vm.machine.console()
    assert "guest-shutdown called, mode: powerdown" in console
    assert "reboot: Power down" in console  # the kernel's last word
    with pytest.raises((EOFError, OSError)):
        vm.client.line(timeout=5)  # no reply to guest-shutdown, and the port is gone
    print(f"\nVM: first reply {vm.timings['first reply']:.1f} s; power-off took {took:.1f} s")
