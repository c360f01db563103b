"""Proof inside a real VM: trio-qga on the virtio-serial port and on an ISA serial
line, driven from the host, beside the real qemu-ga started the same way.

One VM (this machine's root, TCG when KVM does not work) runs two phases
(``tests/support/vm_guest.py``, started through the launcher's own agent on a port of its
own): trio-qga on both ports, then qemu-ga on both ports. The same host session
runs against each agent on each port: sync-delimited after a 0xFF, ping, info,
a guest-file round trip into a directory shared with the host, and a host that
goes away in the middle of a request and comes back.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.host.vm.background import BackgroundVm
from tests.support.reference import qemu_ga_binary
from tests.support.vm import (
    AGENT_PORT,
    BOOT_DEADLINE,
    PORTS,
    ROOT,
    HostEnd,
    agents_under_test,
    installed_agent,
    spawn,
)

# Its VM runs qemu-ga too: every test here needs it installed.
pytestmark = [pytest.mark.vm, pytest.mark.qemu_ga]

METHODS = {"virtio": "virtio-serial", "isa": "isa-serial"}
FILE_DATA = bytes(range(256)) * 16  # 4 KiB, every byte value


def file_round_trip(end: HostEnd, path: Path) -> dict[str, Any]:
    """Write FILE_DATA into the shared directory through the agent, read it back."""
    handle = end.execute("guest-file-open", {"path": str(path), "mode": "w"})["return"]
    encoded = base64.b64encode(FILE_DATA).decode()
    written = end.execute("guest-file-write", {"handle": handle, "buf-b64": encoded})
    closed = end.execute("guest-file-close", {"handle": handle})
    on_host = path.read_bytes()  # the share has no cache: the guest's write is here
    handle = end.execute("guest-file-open", {"path": str(path), "mode": "r"})["return"]
    read = end.execute("guest-file-read", {"handle": handle, "count": 2 * len(FILE_DATA)})
    end.execute("guest-file-close", {"handle": handle})
    return {
        "written": written,
        "closed": closed,
        "host_sees_the_data": on_host == FILE_DATA,
        "read": {key: read["return"][key] for key in ("count", "eof")},
        "read_back_the_data": base64.b64decode(read["return"]["buf-b64"]) == FILE_DATA,
    }


def reconnect_mid_request(end: HostEnd, deadline: float) -> dict[str, Any]:
    """Half a request, the host goes away, comes back and sends a whole one."""
    end.send(b'{"execute":"guest-pi')
    end.close()
    time.sleep(2)  # long enough for the guest to see the host go (TCG)
    end.connect(deadline)
    end.send(b'{"execute":"guest-ping","id":"after-reconnect"}\n')
    first = end.line(timeout=5)
    end.sync(deadline)
    return {
        "first_reply": None if first is None else json.loads(first.lstrip(b"\xff")),
        "after_resync": end.execute("guest-ping"),
    }


def host_session(end: HostEnd, shared_file: Path, started: float) -> dict[str, Any]:
    deadline = started + BOOT_DEADLINE
    end.connect(deadline)
    sync = end.sync(deadline)
    answered_after = time.monotonic() - started
    info = end.execute("guest-info")["return"]
    return {
        "answered_after": answered_after,
        "sync": sync,
        "ping": end.execute("guest-ping"),
        "info": {
            "keys": sorted(info),
            "has guest-file-open": any(
                command["name"] == "guest-file-open" for command in info["supported_commands"]
            ),
        },
        "file": file_round_trip(end, shared_file),
        "reconnect": reconnect_mid_request(end, deadline),
    }


@dataclass
class Phase:
    """What one agent did on both ports."""

    sessions: dict[str, dict[str, Any]]
    idle_cpu: float  # share of a CPU the virtio agent used with no host attached
    exits: dict[str, dict[str, Any]]
    logs: dict[str, str]


class VM:
    def __init__(self, control: Path, machine: BackgroundVm, started: float) -> None:
        self.control = control
        self.machine = machine
        self.started = started
        self.ends = {
            "virtio": HostEnd(machine.sockets[AGENT_PORT]),
            "isa": HostEnd(machine.isa_socket),
        }

    def run_phase(self, name: str) -> Phase:
        """Drive the agents of phase ``name``, then stop them."""
        sessions = {
            port: host_session(end, self.control / f"{name}-{port}.bin", self.started)
            for port, end in self.ends.items()
        }
        self.ends["virtio"].close()  # no host on the port from now on
        time.sleep(3)
        idle = self.cpu_share(name, "virtio", window=2)
        self.ends["isa"].close()
        (self.control / f"{name}.stop").touch()
        exits_file = self.control / f"{name}.exit"
        deadline = time.monotonic() + 120
        while not exits_file.exists():
            assert self.machine.running, f"the VM stopped:\n{self.machine.console()[-3000:]}"
            assert time.monotonic() < deadline, f"phase {name} did not stop"
            time.sleep(0.1)
        logs = {
            port: (self.control / f"{name}-{port}.stderr").read_bytes().decode(errors="replace")
            for port in PORTS
        }  # qemu-ga -v logs what it reads, 0xFF included
        self.started = time.monotonic()  # the next phase's agents start now
        return Phase(sessions, idle, json.loads(exits_file.read_text()), logs)

    def cpu_share(self, phase: str, port: str, window: float) -> float:
        text = (self.control / f"{phase}-{port}.cpu").read_text()
        lines = text.splitlines()[: None if text.endswith("\n") else -1]
        samples = [tuple(map(float, line.split())) for line in lines]
        end_time, end_cpu = samples[-1]
        start_time, start_cpu = next(s for s in samples if s[0] >= end_time - window)
        return (end_cpu - start_cpu) / (end_time - start_time)


def agent_plan(control: Path, qemu_ga: str) -> list[dict[str, Any]]:
    trio_qga_command = installed_agent()

    def trio_qga(port: str) -> dict[str, Any]:
        state = control / f"state-trio-{port}"
        state.mkdir()
        pidfile = f"/tmp/trio-qga-{port}.pid"
        argv = [*trio_qga_command, "-m", METHODS[port], "-p", PORTS[port]]
        return {"argv": [*argv, "-t", str(state), "-f", pidfile, "-v"], "pidfile": pidfile}

    def reference(port: str) -> dict[str, Any]:
        state = control / f"state-qemu-ga-{port}"
        state.mkdir()
        argv = [qemu_ga, "-m", METHODS[port], "-p", PORTS[port], "-t", str(state)]
        return {"argv": [*argv, "-f", f"/tmp/qemu-ga-{port}.pid", "-v"], "pidfile": None}

    return [
        {"name": "trio-qga", "agents": {port: trio_qga(port) for port in PORTS}},
        {"name": "qemu-ga", "agents": {port: reference(port) for port in PORTS}},
    ]


@pytest.fixture(scope="module")
def vm(
    tmp_path_factory: pytest.TempPathFactory, qga_vm_factory: Callable[..., BackgroundVm]
) -> Iterator[VM]:
    qemu_ga = qemu_ga_binary()
    control = tmp_path_factory.mktemp("vm")
    plan = json.dumps(agent_plan(control, qemu_ga))
    with qga_vm_factory(agents_under_test(control)) as machine:
        guest = [sys.executable, str(ROOT / "tests" / "support" / "vm_guest.py"), str(control)]
        spawn(machine, [*guest, plan], control / "vm_guest.out")
        yield VM(control, machine, time.monotonic())


@pytest.fixture(scope="module")
def trio_qga(vm: VM) -> Phase:
    phase = vm.run_phase("trio-qga")
    print(f"\ntrio-qga in the VM: {summary(phase)}")
    return phase


@pytest.fixture(scope="module")
def qemu_ga(vm: VM, trio_qga: Phase) -> Phase:
    phase = vm.run_phase("qemu-ga")
    print(f"\nqemu-ga in the VM: {summary(phase)}")
    return phase


def summary(phase: Phase) -> str:
    return json.dumps(
        {
            "first answer (s after start)": {
                port: round(session["answered_after"], 1)
                for port, session in phase.sessions.items()
            },
            "idle CPU share on virtio without host": round(phase.idle_cpu, 3),
            "after a reconnect mid-request": {
                port: session["reconnect"]["first_reply"]
                for port, session in phase.sessions.items()
            },
            "exits": phase.exits,
        }
    )


@pytest.mark.parametrize("port", PORTS)
def test_trio_qga_serves_a_real_session(trio_qga: Phase, port: str) -> None:
    session = trio_qga.sessions[port]
    assert session["sync"].startswith(b"\xff{")  # the delimiter before the reply
    assert session["ping"] == {"return": {}}
    assert session["info"] == {
        "keys": ["supported_commands", "version"],
        "has guest-file-open": True,
    }
    assert session["file"] == {
        "written": {"return": {"count": len(FILE_DATA), "eof": False}},
        "closed": {"return": {}},
        "host_sees_the_data": True,
        "read": {"count": len(FILE_DATA), "eof": True},
        "read_back_the_data": True,
    }


def test_virtio_host_that_comes_back_gets_a_clean_parser(trio_qga: Phase) -> None:
    reconnect = trio_qga.sessions["virtio"]["reconnect"]
    # The half request of the host that left is forgotten: no 0xFF needed.
    assert reconnect["first_reply"] == {"return": {}, "id": "after-reconnect"}
    assert reconnect["after_resync"] == {"return": {}}


def test_serial_line_has_no_disconnect_so_the_host_resyncs(trio_qga: Phase) -> None:
    reconnect = trio_qga.sessions["isa"]["reconnect"]
    # A serial line cannot tell that the host changed: the half request and the
    # new one make invalid JSON, answered at once; 0xFF then resynchronises.
    assert reconnect["first_reply"]["error"]["class"] == "GenericError"
    assert reconnect["after_resync"] == {"return": {}}


def test_virtio_port_without_host_does_not_spin(trio_qga: Phase) -> None:
    assert trio_qga.idle_cpu < 0.1, f"{trio_qga.idle_cpu:.0%} of a CPU with no host attached"


def test_sigterm_stops_trio_qga_cleanly_in_the_guest(trio_qga: Phase) -> None:
    for port, result in trio_qga.exits.items():
        assert result == {"status": 0, "pidfile_left": False}, port
        assert "SIGTERM received, stopping" in trio_qga.logs[port]


def test_every_command_is_logged_with_verbose(trio_qga: Phase) -> None:
    for log in trio_qga.logs.values():
        for command in ("guest-sync-delimited", "guest-ping", "guest-info", "guest-file-read"):
            assert f"executing {command}" in log


@pytest.mark.parametrize("port", PORTS)
def test_same_session_as_qemu_ga(trio_qga: Phase, qemu_ga: Phase, port: str) -> None:
    ours, theirs = trio_qga.sessions[port], qemu_ga.sessions[port]
    for sync in (ours["sync"], theirs["sync"]):  # the ids differ with the retries
        assert re.fullmatch(rb'\xff\{"return": \d+\}', sync)
    for step in ("ping", "info", "file"):
        assert ours[step] == theirs[step], step
    # Both recover with 0xFF after a host left mid-request; what they answer
    # before that differs (see test_virtio_host_that_comes_back_gets_a_clean_parser).
    assert ours["reconnect"]["after_resync"] == theirs["reconnect"]["after_resync"]


def test_qemu_ga_stops_on_sigterm_too(qemu_ga: Phase) -> None:
    """qemu-ga 7.2 quits on SIGTERM, but not always cleanly.

    Now and then (one CI run in several) its virtio agent, whose host has gone,
    logs "quitting" and then dies of SIGABRT in its clean-up. That is qemu-ga's
    bug, not the test's: the reference is held to stopping, and trio-qga to
    exit status 0 every time (test_sigterm_stops_trio_qga_cleanly_in_the_guest).
    """
    for port, result in qemu_ga.exits.items():
        assert "received signal num 15, quitting" in qemu_ga.logs[port], port
        assert result["status"] in (0, -signal.SIGABRT), port
