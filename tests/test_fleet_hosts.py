"""trio-qga-client across two real hypervisors: two libvirt daemons of our own (two URIs)
and three TCG domains (``tests/support/fleet_hosts.py``: on host a a trio-qga domain and
a qemu-ga domain, on host b a trio-qga domain), shared by every scenario: ``info`` and a
coordinated freeze over an inventory; a host cut off mid-run; a freeze refused on host b
that thaws host a's; the deadline passing mid-freeze; the client killed while all are
frozen (trio-qga guests thaw themselves through ``--thaw-timeout``, qemu-ga's stay
frozen) or stopped by SIGTERM (it thaws them all). The same logic on fake hosts:
test_client_hosts.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.version import VERSION
from tests.support.fleet_hosts import SCRATCH, THAW_TIMEOUT, Fleet, two_hosts
from tests.support.libvirt_host import needs_libvirt
from tests.support.reference import qemu_ga_binary

pytestmark = [pytest.mark.libvirt, pytest.mark.vm, pytest.mark.qemu_ga, pytest.mark.slow]

CLIENT = [sys.executable, "-m", "agent.host.cli"]
CLIENT_DEADLINE = 300.0  # seconds for one client run against TCG guests on a busy host
WAIT = 240.0  # seconds for something a guest does to show
ALL = ["-d", "*:fleet-*"]
FREEZE = ["fsfreeze", "freeze-thaw", "--timeout", "60", SCRATCH]
NAMES = ["a:fleet-qemu-ga", "a:fleet-trio-qga", "b:fleet-trio-qga"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    needs_libvirt()
    pytest.importorskip("libvirt", reason="libvirt-python: scripts/setup --test installs it")
    base = tmp_path_factory.mktemp("fleet")
    with two_hosts(base, qemu_ga_binary()) as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def clean(fleet: Fleet) -> Iterator[None]:
    """After each scenario: the hooks let freezes through, the markers gone, all thawed."""
    yield
    for domain in fleet.domains:
        for name in ("freeze-sleep", "freeze-fail", "exec-started"):
            domain.set_hook(name, None)
    fleet.thaw_all()


def client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLIENT, *args], capture_output=True, text=True, timeout=CLIENT_DEADLINE, check=False
    )


def report(output: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    *lines, summary = (json.loads(line) for line in output.splitlines())
    return lines, summary["summary"]


def outcomes(lines: list[dict[str, Any]]) -> list[tuple[str, bool, str | None]]:
    return [(line["target"], line["ok"], (line["error"] or {}).get("class")) for line in lines]


def frozen_check(fleet: Fleet) -> str:
    """A shell command that succeeds when every domain says it is frozen."""
    return " && ".join(
        f"virsh -c '{d.host.uri}' qemu-agent-command {d.domain.name}"
        """ '{"execute":"guest-fsfreeze-status"}' | grep -q frozen"""
        for d in fleet.domains
    )


def wait_for(what: str, condition: Any, seconds: float = WAIT) -> float:
    """Seconds until ``condition()`` held (polled)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what}: not within {seconds:g} s"
        time.sleep(0.2)
    return time.monotonic() - started


def test_info_and_a_freeze_over_an_inventory_of_two_hosts(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = ["--inventory", str(fleet.inventory(tmp_path / "fleet"))]
    done = client(*inventory, "--json", "info")
    assert done.returncode == 0, done.stderr
    lines, summary = report(done.stdout)
    assert [line["target"] for line in lines] == NAMES
    versions = [line["return"]["version"] for line in lines]
    assert re.fullmatch(r"\d+\.\d+\.\d+", versions[0])
    assert versions[1:] == [VERSION, VERSION]
    assert summary["hosts"] == {
        "a": {"targets": 2, "ok": 2, "failed": 0},
        "b": {"targets": 1, "ok": 1, "failed": 0},
    }

    done = client(*inventory, "--json", *FREEZE, "--run", frozen_check(fleet), "--deadline", "120")
    assert done.returncode == 0, done.stderr
    lines, summary = report(done.stdout)
    assert [(line["target"], line["ok"]) for line in lines] == [(name, True) for name in NAMES]
    assert all(line["return"]["frozen"] == line["return"]["thawed"] == 1 for line in lines)
    assert summary["all_frozen"]
    assert summary["command"] == {"status": 0, "error": None}  # it saw all three frozen
    windows = {line["target"]: line["return"]["window"] for line in lines}
    assert max(windows.values()) <= summary["window"] <= summary["seconds"]
    assert not any(domain.frozen() for domain in fleet.domains)

    table = client(*fleet.connect(), *ALL, "ping")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert [rows[1][:3], rows[2][:2], rows[3][:3]] == [  # each host's label once
        ["a", "fleet-qemu-ga", "ok"],
        ["fleet-trio-qga", "ok"],
        ["b", "fleet-trio-qga", "ok"],
    ]
    assert table.stdout.splitlines()[-1] == "3 domains on 2 hosts: 3 ok, 0 failed"
    with capsys.disabled():
        shown = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in windows.items())
        print(f"\nfrozen windows: {shown}; overall {summary['window']:.2f} s")


def test_a_host_cut_off_mid_run_fails_its_domain_only(fleet: Fleet) -> None:
    """Host b's libvirtd stops (SIGSTOP) while the guests run a program: its domain
    times out, host a's finish, and the client ends."""
    b = fleet.domains[2]
    # Every guest runs it; host b's guest writes through its share (the others'
    # writes land in their own overlays, at the same path).
    script = f"touch {b.exchange}/exec-started; sleep 8; echo done"
    argv = [*CLIENT, *fleet.connect(), *ALL, "--json", "--timeout", "20"]
    argv += ["exec", "/bin/sh", "-c", script]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the program on host b", (b.exchange / "exec-started").exists)
        b.host.pause()
        out, err = process.communicate(timeout=CLIENT_DEADLINE)
    finally:
        b.host.resume()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, err
    lines, summary = report(out)
    assert outcomes(lines) == [
        ("a:fleet-qemu-ga", True, None),
        ("a:fleet-trio-qga", True, None),
        ("b:fleet-trio-qga", False, "Timeout"),
    ]
    assert [line["return"]["status"] for line in lines[:2]] == [0, 0]
    assert summary["hosts"]["b"] == {"targets": 1, "ok": 0, "failed": 1}
    assert b.agent_command("guest-ping") == {}  # host b answers again


def test_a_freeze_refused_on_host_b_thaws_host_a(fleet: Fleet, tmp_path: Path) -> None:
    b = fleet.domains[2]
    b.set_hook("freeze-sleep", "5")  # host a's are frozen by then
    b.set_hook("freeze-fail", "")
    ran = tmp_path / "ran"
    done = client(*fleet.connect(), *ALL, "--json", *FREEZE, "--run", f"touch {ran}")
    assert done.returncode == 1, done.stderr
    lines, summary = report(done.stdout)
    assert outcomes(lines) == [
        ("a:fleet-qemu-ga", True, None),
        ("a:fleet-trio-qga", True, None),
        ("b:fleet-trio-qga", False, "GenericError"),
    ]
    assert [(line["return"]["frozen"], line["return"]["thawed"]) for line in lines[:2]] == [
        (1, 1),
        (1, 1),
    ]
    assert "the test refuses this freeze" in lines[2]["error"]["desc"]
    assert (summary["all_frozen"], summary["command"]) == (False, {"status": None, "error": None})
    assert not ran.exists()
    assert not any(domain.frozen() for domain in fleet.domains)


def test_the_deadline_passing_mid_freeze_thaws_every_host(fleet: Fleet) -> None:
    """Host b's freeze takes 20 s, the deadline is 8: every domain is thawed, host b's
    too once its freeze has landed (libvirt holds the thaw until the freeze is done)."""
    b = fleet.domains[2]
    b.set_hook("freeze-sleep", "20")
    done = client(*fleet.connect(), *ALL, "--json", *FREEZE, "--run", "true", "--deadline", "8")
    assert done.returncode == 1, done.stderr
    lines, summary = report(done.stdout)
    assert outcomes(lines) == [
        ("a:fleet-qemu-ga", True, None),
        ("a:fleet-trio-qga", True, None),
        ("b:fleet-trio-qga", False, "Timeout"),
    ]
    assert lines[2]["error"]["desc"] == "freeze: the deadline passed"
    assert lines[2]["return"]["thawed"] == 1  # its freeze landed after the deadline: undone
    assert (summary["all_frozen"], summary["command"]) == (False, {"status": None, "error": None})
    assert not any(domain.frozen() for domain in fleet.domains)


def frozen_by_a_client(fleet: Fleet, tmp_path: Path) -> subprocess.Popen[str]:
    """A client in a session of its own, its command running: every domain frozen."""
    ran = tmp_path / "frozen"
    argv = [*CLIENT, *fleet.connect(), *ALL, *FREEZE, "--deadline", "600"]
    argv += ["--run", f"touch {ran}; exec sleep 600"]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_for("the client's command", ran.exists)
    return process


def test_a_killed_client_leaves_trio_qga_guests_that_thaw_themselves(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    process = frozen_by_a_client(fleet, tmp_path)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the client and its command: nothing thaws
    finally:
        process.communicate()
    trio_qga, qemu_ga = [fleet.domains[1], fleet.domains[2]], fleet.domains[0]
    assert [d.agent for d in fleet.domains] == ["qemu-ga", "trio-qga", "trio-qga"]
    assert all(domain.frozen() for domain in fleet.domains)  # left frozen by the client
    took = wait_for(
        "trio-qga's --thaw-timeout",
        lambda: not any(domain.frozen() for domain in trio_qga),
        THAW_TIMEOUT + WAIT,
    )
    assert qemu_ga.frozen()  # no safety net: frozen until someone thaws it
    assert qemu_ga.virsh("domfsthaw", "{}").returncode == 0
    assert not qemu_ga.frozen()
    with capsys.disabled():
        print(f"\nkilled client: trio-qga guests thawed themselves {took:.1f} s later")


def test_sigterm_stops_the_client_after_it_thawed_every_host(fleet: Fleet, tmp_path: Path) -> None:
    process = frozen_by_a_client(fleet, tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=CLIENT_DEADLINE)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert not any(domain.frozen() for domain in fleet.domains)
