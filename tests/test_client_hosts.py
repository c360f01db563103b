"""trio-qga-client across many hosts, on fake hypervisors (``tests/support/fake_hosts.py``):
labels and inventories, ``LABEL:DOMAIN`` names and filters, one connection per URI, a host
down or hung, the limits per host, a freeze across hosts, the reports. The same against
two real libvirt daemons: test_fleet_hosts.py."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.host import cli
from agent.host.errors import AgentTimeout, ClientError
from agent.host.fleet_command import run_fleet
from agent.host.inventory import Host, Selector, Target, Unreached, parse_selector, resolve
from tests.support.fake_hosts import FakeGuest, FakeHost, fake_libvirt, guests

A, B = "test:///a", "test:///b"
BOTH = ["-c", f"a={A}", "-c", f"b={B}"]


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.parse(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


# ---------------------------------------------------------------- the hosts --
def test_labels_are_given_or_taken_from_the_uri() -> None:
    args = cli.parse(
        [
            "-c",
            "qemu+ssh://root@hv-a.example.com/system",
            "-c",
            "b=qemu:///system?socket=/srv/b/libvirt-sock",
            "--connect",
            "hail",  # a libvirt URI alias
            "-d",
            "web*",
            "ping",
        ]
    )
    assert [(h.label, h.uri, h.labelled) for h in args.hosts] == [
        ("hv-a.example.com", "qemu+ssh://root@hv-a.example.com/system", False),
        ("b", "qemu:///system?socket=/srv/b/libvirt-sock", True),
        ("hail", "hail", False),
    ]
    assert args.fleet
    # a URI's own '=' does not make a label
    [host] = cli.parse(["-c", "qemu:///system?socket=/x", "-d", "w", "ping"]).hosts
    assert (host.label, host.uri) == ("localhost", "qemu:///system?socket=/x")


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["-c", "qemu:///system?socket=/a", "-c", "qemu:///system?socket=/b"],
            "label 'localhost' is given twice (qemu:///system?socket=/a, qemu:///system?socket=/b):"
            " give each its own label (LABEL=URI)",
        ),
        (["-c", f"a={A}", "-c", f"b={A}"], f"URI '{A}' is given twice (a, b)"),
        (["-c", "qemu+tcp://[::1]/system"], "its host '::1' cannot be a label: give one"),
        (["-c", "a="], "'a=': no URI after the label"),
        ([*BOTH, "-d", "c:web1"], "--domain 'c:web1': no host labelled 'c' (labels: a, b)"),
        ([*BOTH, "--address", "/run/qga.sock"], "--address and --connect (or --inventory)"),
    ],
)
def test_hosts_that_cannot_be_told_apart_are_refused(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    domains = [] if "-d" in argv else ["-d", "web1"]
    assert error in parse_error([*argv, *domains, "ping"], capsys)


def test_an_inventory_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = tmp_path / "fleet"
    inventory.write_text(
        "# the database cluster\n"
        "\n"
        "a  qemu+ssh://hv-a/system  'db*'  web1   # two globs\n"
        "b  qemu+tls://hv-b/system\n"
    )
    args = cli.parse(["--inventory", str(inventory), "-c", "c=qemu:///system", "ping"])
    assert [(h.label, h.uri, h.globs) for h in args.hosts] == [
        ("c", "qemu:///system", ()),
        ("a", "qemu+ssh://hv-a/system", ("db*", "web1")),
        ("b", "qemu+tls://hv-b/system", ()),
    ]
    assert args.fleet
    assert args.selectors == []  # the inventory's globs choose
    (tmp_path / "bad").write_text("a qemu:///system\nqemu:///other\n")
    error = parse_error(["-i", str(tmp_path / "bad"), "-d", "x", "ping"], capsys)
    assert error.endswith(
        f"{tmp_path}/bad:2: expected LABEL URI [DOMAIN-GLOB...], got 'qemu:///other'"
    )
    error = parse_error(["-i", str(tmp_path / "none"), "-d", "x", "ping"], capsys)
    assert "No such file or directory" in error
    (tmp_path / "bare").write_text("a qemu:///system\n")
    error = parse_error(["-i", str(tmp_path / "bare"), "ping"], capsys)
    assert error.endswith("--connect needs --domain (or domain globs in the inventory)")


def test_one_domain_of_one_host_is_not_a_fleet() -> None:
    assert not cli.parse(["-c", f"a={A}", "-d", "a:web1", "ping"]).fleet
    assert not cli.parse(["-c", A, "-d", "web1", "ping"]).fleet
    assert cli.parse(["-c", A, "-d", "web*", "ping"]).fleet
    assert cli.parse([*BOTH, "-d", "a:web1", "ping"]).fleet  # the names carry labels


# ----------------------------------------------------------- which domains --
HOST_A, HOST_B = Host("a", A, labelled=True), Host("b", B, ("db*",), labelled=True)
RUNNING = {"a": ["db1", "web1", "web2"], "b": ["db2", "web1", "web3"]}


def plan(patterns: list[str], running: dict[str, list[str] | None] | None = None) -> list[str]:
    hosts = [HOST_A, HOST_B]
    selectors = [parse_selector(text, hosts) for text in patterns]
    found = resolve(hosts, selectors, RUNNING if running is None else running)
    return [
        entry.name if isinstance(entry, Target) else f"({entry.name})" for entry in found.entries
    ]


def test_patterns_by_host_in_the_hosts_order() -> None:
    assert plan(["web*"]) == ["a:web1", "a:web2"]  # b's inventory keeps only db*
    assert plan(["db*", "a:web2"]) == ["a:db1", "a:web2", "b:db2"]
    assert plan(["*:db*"]) == ["a:db1", "b:db2"]  # a glob of labels
    assert plan(["b:db9"]) == ["b:db9"]  # a name with its host: taken as it is
    assert plan(["db2"]) == ["b:db2"]  # without: where it runs
    assert plan([]) == ["b:db2"]  # no --domain: the inventory's globs


def test_a_pattern_that_finds_nothing_is_an_error_unless_a_host_was_not_reached() -> None:
    with pytest.raises(ClientError, match="no running domain matches 'mail\\*'"):
        plan(["web*", "mail*"])
    with pytest.raises(ClientError, match="no running domain matches 'web9'"):
        plan(["web9"])
    assert plan(["web9"], {"a": ["web1"], "b": None}) == ["(b:web9)"]
    assert plan(["*:db*", "a:web1"], {"a": None, "b": ["db2"]}) == ["(a:db*)", "(a:web1)", "b:db2"]


def test_one_host_by_its_uri_keeps_bare_names() -> None:
    host = Host("localhost", "qemu:///system")
    found = resolve([host], [Selector("web*", None, "web*")], {"localhost": ["web1"]})
    assert found.entries == [Target(host, "web1", "web1")]
    gone = resolve([host], [Selector("web*", None, "web*")], {"localhost": None})
    assert gone.entries == [Unreached(host, "localhost:web*")]


# ------------------------------------------------------- running, reports --
async def fleet_json(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    status = await run_fleet(cli.parse(["--json", *argv]))
    *lines, summary = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    return status, lines, summary["summary"]


def outcomes(lines: list[dict[str, Any]]) -> list[tuple[str, bool, str | None]]:
    return [(line["target"], line["ok"], (line["error"] or {}).get("class")) for line in lines]


@pytest.fixture
def two_hosts(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeHost]:
    return fake_libvirt(
        monkeypatch,
        FakeHost(A, *guests("db1", "web1", "web2")),
        FakeHost(B, FakeGuest("web1", version="7.2.22"), *guests("web3")),
    )


async def test_one_command_on_the_domains_of_two_hosts(
    two_hosts: dict[str, FakeHost], capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines, summary = await fleet_json(capsys, *BOTH, "-d", "web*", "info")
    assert status == 0
    assert outcomes(lines) == [
        (name, True, None) for name in ("a:web1", "a:web2", "b:web1", "b:web3")
    ]
    assert lines[2]["return"]["version"] == "7.2.22"
    assert summary["hosts"] == {
        "a": {"targets": 2, "ok": 2, "failed": 0},
        "b": {"targets": 2, "ok": 2, "failed": 0},
    }
    assert [(h.opened, h.closed) for h in two_hosts.values()] == [(1, 1), (1, 1)]


async def test_only_the_hosts_named_are_connected_to(
    two_hosts: dict[str, FakeHost], capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines, _ = await fleet_json(capsys, *BOTH, "-d", "a:web*", "ping")
    assert (status, outcomes(lines)) == (0, [("a:web1", True, None), ("a:web2", True, None)])
    assert two_hosts[B].opened == 0


async def test_a_host_that_is_down_is_reported_and_the_others_served(
    two_hosts: dict[str, FakeHost], capsys: pytest.CaptureFixture[str]
) -> None:
    two_hosts[B].down = True
    status, lines, summary = await fleet_json(capsys, *BOTH, "-d", "web*", "-d", "b:db1", "ping")
    assert status == 1
    assert outcomes(lines) == [
        ("a:web1", True, None),
        ("a:web2", True, None),
        ("b:web*", False, "ClientError"),
        ("b:db1", False, "ClientError"),
    ]
    assert lines[2]["error"]["desc"] == f"cannot connect to {B}: Failed to connect socket"
    assert summary["hosts"]["b"] == {"targets": 2, "ok": 0, "failed": 2}
    assert summary["error"] is None


async def test_a_host_that_does_not_answer_holds_up_nothing(
    two_hosts: dict[str, FakeHost],
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.abc.Clock,
) -> None:
    two_hosts[B].hung = True
    started = trio.current_time()
    status, lines, _ = await fleet_json(capsys, *BOTH, "-d", "web*", "--host-timeout", "20", "ping")
    assert status == 1
    assert outcomes(lines) == [
        ("a:web1", True, None),
        ("a:web2", True, None),
        ("b:web*", False, "Timeout"),
    ]
    assert lines[2]["error"]["desc"] == f"{B}: no answer within 20 s"
    assert lines[0]["seconds"] < 1  # a's domains did not wait for b
    assert trio.current_time() - started < 30  # 20 s for b, then a moment to close it


async def test_a_host_that_hangs_mid_run_fails_its_own_domains_only(
    two_hosts: dict[str, FakeHost],
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.abc.Clock,
) -> None:
    for host in two_hosts.values():
        for guest in host.guests.values():
            guest.exec_seconds = 10

    async def hang_b() -> None:
        await trio.sleep(3)
        two_hosts[B].hung = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hang_b)
        status, lines, summary = await fleet_json(
            capsys, *BOTH, "-d", "web*", "--timeout", "5", "exec", "/bin/true"
        )
    assert status == 1
    assert outcomes(lines) == [
        ("a:web1", True, None),
        ("a:web2", True, None),
        ("b:web1", False, "Timeout"),
        ("b:web3", False, "Timeout"),
    ]
    assert "no reply within 5" in lines[2]["error"]["desc"]
    assert summary["seconds"] < 20  # the close of the hung host is not waited for


async def test_jobs_per_host_bound_each_host(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.abc.Clock,
) -> None:
    hosts = fake_libvirt(
        monkeypatch,
        FakeHost(A, *guests(*(f"web{n}" for n in range(6)), exec_seconds=5)),
        FakeHost(B, *guests("web6", "web7", exec_seconds=5)),
    )
    argv = [*BOTH, "-d", "web*", "--jobs", "3", "--jobs-per-host", "2", "exec", "/bin/true"]
    status, lines, _ = await fleet_json(capsys, *argv)
    assert (status, len(lines)) == (0, 8)
    assert (hosts[A].peak, hosts[A].load.peak) == (2, 3)


async def test_the_table_is_grouped_by_host(
    two_hosts: dict[str, FakeHost], capsys: pytest.CaptureFixture[str]
) -> None:
    two_hosts[B].down = True
    status = await run_fleet(cli.parse([*BOTH, "-d", "web*", "-d", "b:db2", "info"]))
    assert status == 1
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["host", "domain", "status", "result", "seconds"]
    assert rows[1][:3] == ["a", "web1", "ok"]
    assert rows[2][:2] == ["web2", "ok"]  # the label once per host
    assert rows[3][:4] == ["b", "web*", "FAILED", "ClientError:"]
    assert rows[4][:3] == ["db2", "FAILED", "ClientError:"]
    assert [" ".join(row) for row in rows[-3:]] == [
        "a: 2 domains: 2 ok, 0 failed",
        "b: 2 domains: 0 ok, 2 failed",
        "4 domains on 2 hosts: 2 ok, 2 failed",
    ]


# ------------------------------------------------------ freeze across hosts --
FREEZE = ["fsfreeze", "freeze-thaw", "--deadline", "30", "/srv"]


def web(hosts: dict[str, FakeHost]) -> list[FakeGuest]:
    """The guests that ``-d 'web*'`` chooses, of every host."""
    return [g for host in hosts.values() for g in host.guests.values() if g.name.startswith("web")]


async def test_a_freeze_across_hosts_reports_each_window_and_the_whole(
    two_hosts: dict[str, FakeHost],
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.abc.Clock,
) -> None:
    two_hosts[A].guests["web1"].freeze_delay = 1
    two_hosts[B].guests["web3"].freeze_delay = 4
    status, lines, summary = await fleet_json(capsys, *BOTH, "-d", "web*", *FREEZE)
    assert status == 0
    assert all(line["ok"] and line["return"]["thawed"] == 1 for line in lines)
    windows = [line["return"]["window"] for line in lines]
    assert summary["all_frozen"]
    assert summary["window"] == pytest.approx(max(windows), abs=0.01)
    assert max(windows) == pytest.approx(4, abs=0.1)  # all thawed once the last froze
    for guest in web(two_hosts):
        assert not guest.frozen
        [(frozen, thawed)] = guest.frozen_times
        assert thawed - frozen <= summary["window"]


async def test_a_freeze_refused_on_one_host_thaws_the_other_hosts_guests(
    two_hosts: dict[str, FakeHost],
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.abc.Clock,
) -> None:
    two_hosts[B].guests["web3"].refuse_freeze = True
    two_hosts[B].guests["web3"].freeze_delay = 2  # a's are frozen by then
    status, lines, summary = await fleet_json(capsys, *BOTH, "-d", "web*", *FREEZE)
    assert status == 1
    assert outcomes(lines) == [
        ("a:web1", True, None),
        ("a:web2", True, None),
        ("b:web1", True, None),
        ("b:web3", False, "GenericError"),
    ]
    assert lines[3]["error"]["desc"] == "freeze: fsfreeze hook has failed"
    assert not summary["all_frozen"]
    a_guests = [guest for guest in web(two_hosts) if guest in two_hosts[A].guests.values()]
    assert all(len(g.frozen_times) == 1 and not g.frozen for g in a_guests)
    assert two_hosts[B].guests["web3"].thaws == 0  # the agent undid its own freeze


async def test_the_deadline_mid_freeze_thaws_every_host(
    two_hosts: dict[str, FakeHost],
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.abc.Clock,
) -> None:
    two_hosts[B].guests["web3"].freeze_delay = 100
    argv = [*BOTH, "-d", "web*", "fsfreeze", "freeze-thaw", "--deadline", "10", "--timeout", "200"]
    status, lines, summary = await fleet_json(capsys, *argv)
    assert status == 1
    assert lines[3]["error"] == {"class": "Timeout", "desc": "freeze: the deadline passed"}
    assert all(g.thaws == 1 and not g.frozen for g in web(two_hosts))  # web3's may have landed
    assert summary["window"] == pytest.approx(10, abs=0.1)


async def test_no_freeze_while_a_host_is_unreached(
    two_hosts: dict[str, FakeHost], capsys: pytest.CaptureFixture[str]
) -> None:
    two_hosts[B].down = True
    status, lines, summary = await fleet_json(capsys, *BOTH, "-d", "web*", *FREEZE, "--run", "true")
    assert status == 1
    assert outcomes(lines) == [
        ("a:web1", False, "Skipped"),
        ("a:web2", False, "Skipped"),
        ("b:web*", False, "ClientError"),
    ]
    assert (summary["all_frozen"], summary["command"], summary["window"]) == (
        False,
        {"status": None, "error": None},
        None,
    )
    assert all(g.freezes == 0 for g in two_hosts[A].guests.values())


async def test_sigterm_stops_the_client_as_ctrl_c_does_thawing_first(
    two_hosts: dict[str, FakeHost], capsys: pytest.CaptureFixture[str]
) -> None:
    """The command, run while all are frozen, sends SIGTERM to the client (this process:
    the client's signal receiver takes it)."""
    args = cli.parse([*BOTH, "-d", "web*", *FREEZE, "--run", "kill -TERM $PPID; sleep 600"])
    with trio.fail_after(30):
        status = await cli.stopped_by_signals(run_fleet, args)
    assert status == 128 + signal.SIGTERM
    assert all(g.thaws == 1 and not g.frozen and g.frozen_times for g in web(two_hosts))


# ---------------------------------------------------------------- libvirt --
async def test_looking_a_domain_up_on_a_hung_libvirtd_times_out() -> None:
    """libvirt's calls run in threads: one that never returns is left behind."""
    pytest.importorskip("libvirt", reason="libvirt-python: scripts/setup --test installs it")
    from agent.host.libvirt_channel import LibvirtConnection

    release = threading.Event()

    class Hung:
        def lookupByName(self, name: str) -> None:
            release.wait(30)

    connection = LibvirtConnection(A, Hung(), trio.CapacityLimiter(4))
    try:
        with pytest.raises(AgentTimeout, match=r"web1: libvirt did not answer within 0\.2 s"):
            await connection.channel("web1", 0.2)
    finally:
        release.set()
