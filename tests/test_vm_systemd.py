"""A VM with systemd as PID 1 (``VmConfig(systemd=True)``): the guest a packaged
agent needs. Its /etc is writable (the overlay), a unit written there starts,
journald keeps what it says, and udev starts the unit that a port's rule asks
for: this machine's qemu-guest-agent package, whose rule starts qemu-ga when
the port ``org.qemu.guest_agent.0`` appears. The launcher's own agent is on a
port of its own, so that the package's agent has the usual one to itself."""

from __future__ import annotations

import time

import pytest
import trio

from agent.host.client import QgaClient
from agent.host.vm.background import BackgroundVm
from tests.support.reference import qemu_ga_binary
from tests.support.vm import AGENT_PORT, CONTROL_PORT

pytestmark = [
    pytest.mark.vm,
    pytest.mark.qemu_ga,  # the packaged agent the guest starts is this machine's qemu-ga
    pytest.mark.qga_vm(scope="module", systemd=True, agent_port=CONTROL_PORT, ports=[AGENT_PORT]),
]
UNIT = """\
[Unit]
Description=A service of the test

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo hello from a unit; touch /run/hello-ran'
"""
PACKAGED_AGENT_DEADLINE = 180.0  # seconds for udev and systemd to start qemu-ga (TCG)


def test_systemd_is_pid_1_and_starts_a_unit_written_to_etc(qga_vm: BackgroundVm) -> None:
    assert qga_vm.run(["cat", "/proc/1/comm"]).stdout == b"systemd\n"
    qga_vm.run(["systemctl", "start", "trio-qga-vm.target"])  # until the boot reaches it
    active = ["trio-qga-vm.target", "systemd-journald.service", "systemd-udevd.service"]
    assert qga_vm.run(["systemctl", "is-active", *active]).stdout.split() == [b"active"] * 3
    qga_vm.write_file("/etc/systemd/system/hello.service", UNIT.encode())
    qga_vm.run(["systemctl", "daemon-reload"])
    qga_vm.run(["systemctl", "start", "hello.service"])
    assert qga_vm.run(["test", "-e", "/run/hello-ran"], check=False).shell_status == 0
    journal = qga_vm.run(["journalctl", "-u", "hello.service", "-o", "cat", "--no-pager"])
    assert b"hello from a unit" in journal.stdout


def test_udev_starts_the_packaged_agent_when_its_port_appears(qga_vm: BackgroundVm) -> None:
    qemu_ga_binary()  # this machine's package is the one the guest sees
    deadline = time.monotonic() + PACKAGED_AGENT_DEADLINE
    while qga_vm.run(["systemctl", "is-active", "qemu-guest-agent"], check=False).shell_status:
        assert time.monotonic() < deadline, qga_vm.run(
            ["systemctl", "status", "qemu-guest-agent", "--no-pager"], check=False
        ).stdout.decode()
        time.sleep(1)

    async def version() -> str:
        path = str(qga_vm.sockets[AGENT_PORT])
        async with await QgaClient.connect_unix(path, request_timeout=60) as client:
            info = await client.info()
            return str(info.version)

    assert trio.run(version).startswith("7.")  # qemu-ga, not us


def test_the_host_s_tmp_is_seen_as_without_systemd(
    qga_vm: BackgroundVm, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A checkout (and its Python) under /tmp runs the agent under systemd too: the
    guest's /tmp is the host's, not emptied at boot (CI once checked out there)."""
    marker = tmp_path_factory.mktemp("seen-by-the-guest") / "marker"
    marker.write_text("from the host\n")
    assert qga_vm.run(["cat", str(marker)]).stdout == b"from the host\n"
    assert qga_vm.run(["test", "-x", qga_vm.config.python], check=False).shell_status == 0
