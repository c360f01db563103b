"""The client's many-guest logic (agent.host.fleet) against fake guests, and how the libvirt
transport reads libvirt's errors. The same code against real domains: test_libvirt.py."""

from __future__ import annotations

import io
import json
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from agent.host.client import QgaClient
from agent.host.errors import AgentError, AgentTimeout, ClientError
from agent.host.fleet import ErrorInfo, Freezable, TargetResult, freeze_all, run_all
from agent.host.inventory import Host, parse_selector, resolve
from agent.host.libvirt_channel import (
    NO_REPLY_WAIT,
    LibvirtChannel,
    LibvirtConnection,
    _error_reply,
)
from agent.host.output import show_table, summary_of, write_json


async def test_run_all_keeps_order_limits_concurrency_and_times_out_each(
    autojump_clock: trio.abc.Clock,
) -> None:
    running = peak = 0

    async def operation(name: str) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            if name == "broken":
                raise ClientError("the agent closed the connection")
            await trio.sleep(100 if name == "stuck" else 1)
            return name.upper()
        finally:
            running -= 1

    names = ["a", "stuck", "b", "broken", "c"]
    results = await run_all(names, operation, limit=2, each=10)
    assert [r.target for r in results] == names
    assert [(r.ok, r.value, r.error) for r in results] == [
        (True, "A", None),
        (False, None, ErrorInfo("Timeout", "no result within 10 s")),
        (True, "B", None),
        (False, None, ErrorInfo("ClientError", "the agent closed the connection")),
        (True, "C", None),
    ]
    assert peak == 2
    assert results[1].seconds == pytest.approx(10)


async def test_run_all_bounds_each_host_and_a_hung_host_holds_only_its_own_slots(
    autojump_clock: trio.abc.Clock,
) -> None:
    hosts = {f"a{n}": "a" for n in range(4)} | {f"b{n}": "b" for n in range(4)}
    running = {"a": 0, "b": 0}
    peaks = {"a": 0, "b": 0, "all": 0}
    finished: dict[str, float] = {}

    async def operation(target: str) -> None:
        host = hosts[target]
        running[host] += 1
        peaks[host] = max(peaks[host], running[host])
        peaks["all"] = max(peaks["all"], sum(running.values()))
        try:
            await trio.sleep(100 if host == "b" else 1)  # b hangs
        finally:
            running[host] -= 1
        finished[target] = trio.current_time()

    start = trio.current_time()
    results = await run_all(list(hosts), operation, limit=3, each=10, hosts=hosts, per_host=2)
    assert (peaks["b"], peaks["all"]) == (2, 3)
    assert peaks["a"] in (1, 2)  # what b's two stuck domains leave
    assert [r.ok for r in results] == [True] * 4 + [False] * 4
    assert max(finished.values()) - start <= 4  # at least one slot each second, not after b


class FakeGuest:
    """A guest's agent as freeze_all sees it; records what was done to it."""

    def __init__(self, freeze_delay: float = 0.0, refuse: bool = False, busy: int = 0) -> None:
        self.freeze_delay = freeze_delay
        self.refuse = refuse
        self.busy = busy  # thaws that do not reach the agent first
        self.frozen = False
        self.thaws = 0
        self.connected = False

    async def fsfreeze_freeze(self, mountpoints: list[str] | None = None) -> int:
        await trio.sleep(self.freeze_delay)
        if self.refuse:
            raise AgentError("guest-fsfreeze-freeze", "GenericError", "failed to freeze /")
        self.frozen = True
        return 2

    async def fsfreeze_thaw(self) -> int:
        if self.busy:
            self.busy -= 1
            raise ClientError("guest-fsfreeze-thaw: Guest agent not available for now")
        self.thaws += 1
        was, self.frozen = self.frozen, False
        return 2 if was else 0


def fleet(**guests: FakeGuest) -> Any:
    @asynccontextmanager
    async def connect(name: str) -> AsyncIterator[Freezable]:
        guest = guests[name]
        guest.connected = True
        try:
            yield guest
        finally:
            guest.connected = False

    return connect


async def test_freeze_all_runs_the_command_while_all_are_frozen() -> None:
    guests = {name: FakeGuest() for name in ("a", "b", "c")}
    seen: list[bool] = []

    async def command() -> int:
        seen.extend(guest.frozen for guest in guests.values())
        return 0

    outcome = await freeze_all(list(guests), fleet(**guests), command=command, limit=2, each=5)
    assert seen == [True, True, True]
    assert outcome.all_frozen
    assert outcome.command_status == 0
    assert [(r.ok, r.value) for r in outcome.results] == [
        (True, {"frozen": 2, "thawed": 2, "window": pytest.approx(0, abs=1)})
    ] * 3
    assert all(not g.frozen and g.thaws == 1 and not g.connected for g in guests.values())


async def test_a_refused_freeze_thaws_the_others_and_skips_the_command() -> None:
    guests = {"a": FakeGuest(), "bad": FakeGuest(refuse=True), "c": FakeGuest()}
    ran = False

    async def command() -> int:
        nonlocal ran
        ran = True
        return 0

    outcome = await freeze_all(list(guests), fleet(**guests), command=command, limit=3, each=5)
    assert not ran
    assert not outcome.all_frozen
    assert outcome.command_status is None
    bad = outcome.results[1]
    assert (bad.ok, bad.value) == (False, None)
    assert bad.error == ErrorInfo("GenericError", "freeze: failed to freeze /", from_agent=True)
    assert guests["bad"].thaws == 0  # the agent thawed what it froze
    assert (guests["a"].thaws, guests["c"].thaws) == (1, 1)
    assert not any(g.frozen for g in guests.values())


async def test_the_deadline_thaws_every_guest_a_freeze_reached(
    autojump_clock: trio.abc.Clock,
) -> None:
    guests = {"a": FakeGuest(), "slow": FakeGuest(freeze_delay=50)}
    outcome = await freeze_all(list(guests), fleet(**guests), limit=2, each=100, deadline=10)
    assert not outcome.all_frozen
    assert outcome.results[1].error == ErrorInfo("Timeout", "freeze: the deadline passed")
    assert (guests["a"].thaws, guests["slow"].thaws) == (1, 1)  # its freeze may have landed


async def test_a_command_past_the_deadline_is_stopped_and_all_thawed(
    autojump_clock: trio.abc.Clock,
) -> None:
    guests = {"a": FakeGuest(), "b": FakeGuest()}

    async def command() -> int:
        await trio.sleep(60)
        return 0

    outcome = await freeze_all(
        list(guests), fleet(**guests), command=command, limit=2, each=5, deadline=20
    )
    assert outcome.all_frozen
    assert (outcome.command_status, outcome.command_error) == (None, "the deadline passed")
    assert all(g.thaws == 1 and not g.frozen for g in guests.values())


async def test_a_thaw_that_does_not_reach_the_agent_is_tried_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Through libvirt, a thaw sent while a freeze that the client gave up on still
    runs fails at once (the agent is busy): it is sent again until it gets through."""
    guests = {"a": FakeGuest(freeze_delay=1), "b": FakeGuest(busy=3)}
    outcome = await freeze_all(list(guests), fleet(**guests), limit=2, each=5)
    assert [(r.ok, r.value) for r in outcome.results] == [
        (True, {"frozen": 2, "thawed": 2, "window": pytest.approx(1)}),
        (True, {"frozen": 2, "thawed": 2, "window": pytest.approx(4)}),  # three retries
    ]
    assert outcome.window == pytest.approx(4)
    never = {"c": FakeGuest(busy=1000)}
    outcome = await freeze_all(list(never), fleet(**never), limit=1, each=5)
    [result] = outcome.results
    assert (result.ok, result.value) == (False, {"frozen": 2})
    assert result.error == ErrorInfo(
        "Timeout",
        "thaw: no reply within 30 s (last: guest-fsfreeze-thaw: Guest agent not available for now)",
    )
    assert outcome.window is None


async def test_cancelled_from_outside_still_thaws() -> None:
    guests = {"a": FakeGuest(), "b": FakeGuest()}
    started = trio.Event()

    async def command() -> int:
        started.set()
        await trio.sleep_forever()
        return 0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: freeze_all(list(guests), fleet(**guests), command=command, limit=2, each=5)
        )
        await started.wait()
        nursery.cancel_scope.cancel()
    assert all(g.thaws == 1 and not g.frozen for g in guests.values())


def test_domains_by_name_and_glob_in_order_each_once() -> None:
    host = Host("localhost", "qemu:///system")

    def matched(*patterns: str) -> list[str]:
        selectors = [parse_selector(pattern, [host]) for pattern in patterns]
        plan = resolve([host], selectors, {"localhost": ["db1", "web1", "web2"]})
        return [target.name for target in plan.targets]

    assert matched("web*", "db1", "web1", "stopped") == ["web1", "web2", "db1", "stopped"]
    with pytest.raises(ClientError, match=r"no running domain matches 'mail\*'"):
        matched("mail*")


class FakeLibvirtError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message


FAKE_LIBVIRT = types.SimpleNamespace(VIR_ERR_INTERNAL_ERROR=1, VIR_ERR_AGENT_UNRESPONSIVE=86)


@pytest.mark.parametrize(
    ("desc", "kind"),
    [
        ("The command guest-nope has not been found", "CommandNotFound"),
        ("Command guest-exec has been disabled", "CommandNotFound"),
        ("failed to open file '/x' (mode: 'r'): No such file or directory", "GenericError"),
    ],
)
def test_libvirt_error_texts_become_error_replies(desc: str, kind: str) -> None:
    err = FakeLibvirtError(1, f"internal error: unable to execute QEMU agent command 'x': {desc}")
    assert _error_reply("x", err, FAKE_LIBVIRT, True) == {"error": {"class": kind, "desc": desc}}


def test_libvirt_transport_errors() -> None:
    gone = FakeLibvirtError(86, "Guest agent is not responding: QEMU guest agent is not connected")
    with pytest.raises(ClientError, match="not connected") as raised:
        _error_reply("guest-ping", gone, FAKE_LIBVIRT, True)
    assert not isinstance(raised.value, AgentTimeout)
    slow = FakeLibvirtError(86, "Guest agent is not responding: Guest agent not available for now")
    with pytest.raises(AgentTimeout):
        _error_reply("guest-ping", slow, FAKE_LIBVIRT, True)
    assert _error_reply("guest-shutdown", slow, FAKE_LIBVIRT, False) is None  # sent no reply
    with pytest.raises(ClientError, match="Domain not found"):
        _error_reply("guest-ping", FakeLibvirtError(42, "Domain not found"), FAKE_LIBVIRT, True)


def test_results_as_a_table_with_a_summary() -> None:
    results = [
        TargetResult("web1", True, {"version": "0.1.0", "supported_commands": [{}, {}]}),
        TargetResult("web2", False, error=ErrorInfo("Timeout", "no result within 600 s")),
    ]
    text = io.StringIO()
    show_table(results, text, extra={"all frozen": False})
    lines = [line.split() for line in text.getvalue().splitlines()]
    assert lines[1][:2] == ["web1", "ok"]
    assert "version 0.1.0, 2 commands" in text.getvalue()
    assert lines[2][:2] == ["web2", "FAILED"]
    assert "Timeout: no result within 600 s" in text.getvalue()
    assert text.getvalue().splitlines()[-2:] == ["all frozen: False", "2 domains: 1 ok, 1 failed"]


def test_results_as_json_lines_with_a_summary_line() -> None:
    results = [
        TargetResult("web1", True, {}, seconds=0.01234),
        TargetResult(
            "web2",
            False,
            {"frozen": 1},
            ErrorInfo("GenericError", "thaw: failed", from_agent=True),
            600,
        ),
    ]
    out = io.StringIO()
    write_json(results, out, summary_of(results, 600.5))
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"target": "web1", "ok": True, "return": {}, "error": None, "seconds": 0.012},
        {
            "target": "web2",
            "ok": False,
            "return": {"frozen": 1},
            "error": {"class": "GenericError", "desc": "thaw: failed"},
            "seconds": 600,
        },
        {
            "summary": {
                "targets": 2,
                "ok": 1,
                "failed": 1,
                "seconds": 600.5,
                "error": None,
            }
        },
    ]


async def test_a_command_without_reply_goes_after_a_ping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through libvirt, guest-shutdown's only answer is libvirt's timeout: it is taken as
    delivered once a guest-ping has just been answered."""
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python: scripts/setup --test")
    libvirt_qemu = pytest.importorskip("libvirt_qemu")
    sent: list[tuple[str, int]] = []

    def agent_command(domain: object, text: str, seconds: int, flags: int) -> str:
        command = json.loads(text)["execute"]
        sent.append((command, seconds))
        if command == "guest-shutdown":
            err = libvirt.libvirtError("virDomainQemuAgentCommand() failed")
            message = "Guest agent is not responding: Guest agent not available for now"
            err.err = (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, 10, message, 2, None, None, None, 0, 0)
            raise err
        return '{"return": {}}'

    monkeypatch.setattr(libvirt_qemu, "qemuAgentCommand", agent_command)
    connection = LibvirtConnection("test:///default", None, trio.CapacityLimiter(1))
    client = QgaClient(LibvirtChannel(connection, None, 7), request_timeout=7)
    assert await client.execute("guest-shutdown") is None
    assert sent == [("guest-ping", 7), ("guest-shutdown", NO_REPLY_WAIT)]
