"""Proof inside a real VM (issue 25): one trio-qga on virtio-serial, isa-serial and a
unix socket inside the guest at the same time, each answering.

One VM (the launcher's, as ``test_vm.py``'s; TCG when KVM does not work) runs
``tests/support/vm_guest.py`` with one phase, started through the launcher's own
agent on a port of its own: the agent on the three transports, and a
guest tool (``vm_local_client.py``) that talks to it over the unix socket. The
host drives both ports with their sessions open at once; a handle the host
opens over virtio-serial is read and closed by the guest tool over the socket,
and is then gone on the isa-serial line too. qemu-ga's single-transport
behaviour (one port per agent) is ``test_vm.py``'s, unchanged.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.host.vm.background import BackgroundVm
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

pytestmark = pytest.mark.vm

LOCAL_SOCKET = "/run/trio-qga-local.sock"  # in the guest's tmpfs
PIDFILE = "/tmp/trio-qga.pid"
SHARED_TEXT = b"opened by the host over virtio-serial, read by a guest tool over the socket"


@dataclass
class Run:
    """What the host and the guest tool saw, and how the agent ended."""

    host: dict[str, Any]
    local: dict[str, Any]
    exits: dict[str, dict[str, Any]]
    log: str


def plan(control: Path) -> list[dict[str, Any]]:
    state = control / "state"
    state.mkdir()
    transports = [
        f"virtio-serial:{PORTS['virtio']}",
        f"isa-serial:{PORTS['isa']}",
        f"unix-listen:{LOCAL_SOCKET}",
    ]
    argv = [*installed_agent()]
    for transport in transports:
        argv += ["--transport", transport]
    argv += ["-t", str(state), "-f", PIDFILE, "-v"]
    client = ROOT / "tests" / "support" / "vm_local_client.py"
    return [
        {
            "name": "several",
            "agents": {
                "agent": {"argv": argv, "pidfile": PIDFILE},
                "local": {
                    "argv": [sys.executable, str(client), LOCAL_SOCKET, str(control)],
                    "ends_by_itself": True,
                },
            },
        }
    ]


def wait_for_file(path: Path, machine: BackgroundVm, deadline: float) -> Path:
    while not path.exists():
        assert machine.running, f"the VM stopped:\n{machine.console()[-3000:]}"
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.1)
    return path


def drive(control: Path, machine: BackgroundVm) -> Run:
    deadline = time.monotonic() + BOOT_DEADLINE
    virtio, isa = HostEnd(machine.sockets[AGENT_PORT]), HostEnd(machine.isa_socket)
    virtio.connect(deadline)
    isa.connect(deadline)
    host: dict[str, Any] = {"sync": {"virtio": virtio.sync(deadline), "isa": isa.sync(deadline)}}
    # Both sessions stay open: each answers while the other is connected.
    host["ping"] = {"virtio": virtio.execute("guest-ping"), "isa": isa.execute("guest-ping")}
    handle = virtio.execute("guest-file-open", {"path": str(control / "shared.txt")})["return"]
    host["handle"] = handle
    partial = control / ".handle"
    partial.write_text(str(handle))
    partial.rename(control / "handle")
    local_file = wait_for_file(control / "local.json", machine, time.monotonic() + BOOT_DEADLINE)
    local = json.loads(local_file.read_text())
    host["read_after_close"] = isa.execute("guest-file-read", {"handle": handle})
    host["ping_after"] = {"virtio": virtio.execute("guest-ping"), "isa": isa.execute("guest-ping")}
    virtio.close()
    isa.close()
    (control / "several.stop").touch()
    exits = wait_for_file(control / "several.exit", machine, time.monotonic() + 120)
    log = (control / "several-agent.stderr").read_bytes().decode(errors="replace")
    return Run(host, local, json.loads(exits.read_text()), log)


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, qga_vm_factory: Callable[..., BackgroundVm]
) -> Iterator[Run]:
    control = tmp_path_factory.mktemp("vm-transports")
    (control / "shared.txt").write_bytes(SHARED_TEXT)
    guest = [sys.executable, str(ROOT / "tests" / "support" / "vm_guest.py"), str(control)]
    with qga_vm_factory(agents_under_test(control)) as machine:
        spawn(machine, [*guest, json.dumps(plan(control))], control / "vm_guest.out")
        yield drive(control, machine)


def test_each_transport_answers_with_the_others_connected(run: Run) -> None:
    for port in ("virtio", "isa"):
        assert run.host["sync"][port].startswith(b"\xff{")
        assert run.host["ping"][port] == {"return": {}}
        assert run.host["ping_after"][port] == {"return": {}}
    assert run.local["sync"] == '\xff{"return": 4242}'
    assert run.local["ping"] == {"return": {}}


def test_a_handle_opened_over_virtio_is_read_and_closed_over_the_guest_socket(run: Run) -> None:
    read = run.local["read"]["return"]
    assert base64.b64decode(read["buf-b64"]) == SHARED_TEXT
    assert (read["count"], read["eof"]) == (len(SHARED_TEXT), True)
    assert run.local["close"] == {"return": {}}
    handle = run.host["handle"]
    assert run.host["read_after_close"] == {
        "error": {"class": "GenericError", "desc": f"handle '{handle}' has not been found"}
    }


def test_the_log_names_the_transport_of_each_session(run: Run) -> None:
    for transport, command in [
        (f"virtio-serial {PORTS['virtio']}", "guest-file-open"),
        (f"isa-serial {PORTS['isa']}", "guest-file-read"),
        (f"unix-listen {LOCAL_SOCKET}", "guest-file-close"),
    ]:
        assert f"[{transport}]: executing {command}" in run.log


def test_sigterm_stops_the_agent_of_three_transports_cleanly(run: Run) -> None:
    assert run.exits["agent"] == {"status": 0, "pidfile_left": False}
    assert run.exits["local"]["status"] == 0
    assert "SIGTERM received, stopping" in run.log
