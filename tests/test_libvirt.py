"""Proof under libvirt, the host that drives guest agents in production.

The suite starts libvirt's daemons itself (``tests/support/libvirt_host.py``) and boots two
transient TCG domains at once, alike but for their agent: Debian's qemu-ga in one,
trio-qga in the other, each on the ``org.qemu.guest_agent.0`` channel libvirt owns. Every
check goes through ``virsh`` only, the same on both, and the results are compared check by
check; the side-by-side table goes to the test output. The checks that power the guests
off come last, in their own test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.host.client import QgaClient
from agent.host.errors import AgentError, CommandNotFound
from tests.support.libvirt_host import GuestDomain, LibvirtHost, needs_libvirt
from tests.support.reference import qemu_ga_binary

# Its domains boot the VM launcher's guest; one of them runs qemu-ga.
pytestmark = [pytest.mark.libvirt, pytest.mark.vm, pytest.mark.qemu_ga]

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "tests" / "support" / "libvirt-guest"
PORT = "/dev/virtio-ports/org.qemu.guest_agent.0"
AGENTS = ("qemu-ga", "trio-qga")
BOOT_DEADLINE = 300.0  # seconds from virsh create to the agent's first answer (TCG, busy host)
USER = "qgauser"  # made by tests/support/libvirt-guest
SCRATCH = "/mnt/scratch"
ADDRESSES = ("domifaddr", "{}", "--source", "agent")


@dataclass
class Guest:
    """One agent's domain, as the checks see it."""

    agent: str
    host: LibvirtHost
    domain: GuestDomain

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``virsh ARGS`` with the domain name in place of ``{}``."""
        return self.host.virsh(*(self.domain.name if arg == "{}" else arg for arg in args))

    def agent_command(self, execute: str, **arguments: Any) -> Any:
        """``virsh qemu-agent-command``: the command's return value."""
        request: dict[str, Any] = {"execute": execute}
        if arguments:
            request["arguments"] = arguments
        done = self.virsh("qemu-agent-command", "{}", json.dumps(request))
        if done.returncode != 0:
            raise AssertionError(f"{execute}: {done.stderr.strip()}")
        return json.loads(done.stdout)["return"]

    def read_file(self, path: str) -> bytes:
        handle = self.agent_command("guest-file-open", path=path)
        try:
            data = self.agent_command("guest-file-read", handle=handle, count=65536)
        finally:
            self.agent_command("guest-file-close", handle=handle)
        return base64.b64decode(data["buf-b64"])

    def wait_for_agent(self, deadline: float) -> None:
        while self.virsh("qemu-agent-command", "{}", '{"execute":"guest-ping"}').returncode:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.agent} never answered; guest output:\n{self.domain.guest_output()}"
                )
            time.sleep(0.5)

    def running(self) -> bool:
        return self.domain.name in self.host.virsh("list", "--name").stdout.split()


@dataclass
class Outcome:
    """One check on one agent: passed or not, what the table shows, what is compared."""

    ok: bool
    shown: str
    value: object = None


@dataclass
class Comparison:
    """The side-by-side table: each check's outcome on each agent."""

    rows: list[tuple[str, dict[str, Outcome]]] = field(default_factory=list)

    def run(self, guests: dict[str, Guest], name: str, check: Callable[[Guest], Outcome]) -> None:
        """``check`` on every agent's domain at once (they are independent)."""

        def attempt(guest: Guest) -> Outcome:
            try:
                return check(guest)
            except (AssertionError, ValueError, KeyError, subprocess.SubprocessError) as err:
                return Outcome(False, f"FAIL: {err}")

        with ThreadPoolExecutor(len(guests)) as pool:
            outcomes = dict(zip(guests, pool.map(attempt, guests.values()), strict=True))
        self.rows.append((name, outcomes))

    def table(self) -> str:
        lines: list[tuple[str, ...]] = [("check", *AGENTS)]
        lines += [(name, *(_cell(o[agent]) for agent in AGENTS)) for name, o in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        return "\n".join(
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )

    def problems(self) -> list[str]:
        """Checks that failed on either agent, or whose compared values differ."""
        found = []
        for name, outcomes in self.rows:
            for agent, outcome in outcomes.items():
                if not outcome.ok:
                    found.append(f"{name} on {agent}: {outcome.shown}")
            values = {agent: outcome.value for agent, outcome in outcomes.items() if outcome.ok}
            if len(values) == len(AGENTS) and len(set(map(repr, values.values()))) > 1:
                found.append(f"{name}: the agents differ: {values}")
        return found


# ----------------------------------------------------------------- fixtures --
def _cell(outcome: Outcome) -> str:
    text = " ".join(outcome.shown.split())
    return text if len(text) <= 60 else text[:57] + "..."


@pytest.fixture(scope="module")
def libvirt_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtHost]:
    needs_libvirt()
    host = LibvirtHost(tmp_path_factory.mktemp("libvirt"))
    try:
        host.start()
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="module")
def guests(libvirt_host: LibvirtHost, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Guest]:
    """Both domains, booted at once, each with its agent answering."""
    started = time.monotonic()
    base = tmp_path_factory.mktemp("domains")
    commands = {
        "qemu-ga": [qemu_ga_binary(), "-f", "/run/qemu-ga.pid"],
        "trio-qga": [sys.executable, "-m", "agent", "-f", "/run/trio-qga.pid"],
    }
    found = {}
    for agent in AGENTS:
        command = [str(GUEST), *commands[agent], "-m", "virtio-serial", "-p", PORT, "-t", "/run"]
        name = f"qga-test-{agent}-{os.getpid()}"
        domain = GuestDomain(name, base / agent, command)
        created = libvirt_host.virsh("create", str(domain.prepare()))
        assert created.returncode == 0, created.stderr
        found[agent] = Guest(agent, libvirt_host, domain)
    deadline = time.monotonic() + BOOT_DEADLINE
    for guest in found.values():
        guest.wait_for_agent(deadline)
    print(f"both agents answered {time.monotonic() - started:.1f} s after the start")
    return found


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    return Comparison()


# ------------------------------------------------------------------- checks --
def virsh_text(*args: str, shown: str = r".+") -> Callable[[Guest], Outcome]:
    """The command succeeds; its output is compared, and what ``shown`` finds in it is
    what the table shows."""

    def check(guest: Guest) -> Outcome:
        done = guest.virsh(*args)
        if done.returncode:
            return Outcome(False, f"FAIL: {done.stderr.strip()}")
        text = done.stdout.strip()
        found = re.findall(shown, text)
        return Outcome(bool(found), "ok: " + " ".join(" ".join(found).split()), text)

    return check


VOLATILE = re.compile(r"fs\.\d+\.used-bytes")


def guestinfo(*flags: str) -> Callable[[Guest], Outcome]:
    """``virsh guestinfo``: the fields it reports are compared (used bytes aside)."""

    def check(guest: Guest) -> Outcome:
        done = guest.virsh("guestinfo", "{}", *flags)
        if done.returncode:
            return Outcome(False, f"FAIL: {done.stderr.strip()}")
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in done.stdout.splitlines())
            if value
        )
        compared = {key: value for key, value in fields.items() if not VOLATILE.fullmatch(key)}
        return Outcome(bool(fields), f"ok: {len(fields)} fields", compared)

    return check


def domtime(guest: Guest) -> Outcome:
    done = guest.virsh("domtime", "{}")
    match = re.fullmatch(r"Time: (\d+)", done.stdout.strip())
    if done.returncode or not match:
        return Outcome(False, f"FAIL: {done.stderr.strip() or done.stdout.strip()}")
    off = int(match[1]) - time.time()
    return Outcome(abs(off) < 300, f"ok: host time {off:+.0f} s")


def domtime_sync(guest: Guest) -> Outcome:
    done = guest.virsh("domtime", "{}", "--sync")
    if done.returncode:
        return Outcome(False, f"FAIL: {done.stderr.strip()}")
    return domtime(guest)


def freeze(*flags: str) -> Callable[[Guest], Outcome]:
    """domfsfreeze, and the agent then says frozen; the count is compared."""

    def check(guest: Guest) -> Outcome:
        done = guest.virsh("domfsfreeze", "{}", *flags)
        if done.returncode:
            return Outcome(False, f"FAIL: {done.stderr.strip()}")
        status = guest.agent_command("guest-fsfreeze-status")
        said = done.stdout.strip()
        return Outcome(status == "frozen", f"ok: {said}; {status}", said)

    return check


def thaw(guest: Guest) -> Outcome:
    done = guest.virsh("domfsthaw", "{}")
    if done.returncode:
        return Outcome(False, f"FAIL: {done.stderr.strip()}")
    status = guest.agent_command("guest-fsfreeze-status")
    said = done.stdout.strip()
    return Outcome(status == "thawed", f"ok: {said}; {status}", said)


def succeeds(*args: str) -> Callable[[Guest], Outcome]:
    def check(guest: Guest) -> Outcome:
        done = guest.virsh(*args)
        if done.returncode:
            return Outcome(False, f"FAIL: {done.stderr.strip()}")
        return Outcome(True, "ok")

    return check


def set_password(guest: Guest) -> Outcome:
    done = guest.virsh("set-user-password", "{}", USER, "Sw0rdfish-libvirt")
    if done.returncode:
        return Outcome(False, f"FAIL: {done.stderr.strip()}")
    shadow = guest.read_file("/etc/shadow").decode()
    entry = next(line for line in shadow.splitlines() if line.startswith(f"{USER}:"))
    hashed = entry.split(":")[1]
    return Outcome(hashed.startswith("$"), f"ok: hash {hashed[:3]}...")


def set_keys(key_file: Path, *flags: str) -> Callable[[Guest], Outcome]:
    """set-user-sshkeys --file: exactly what virsh makes of an ssh-keygen .pub file."""
    return succeeds("set-user-sshkeys", "{}", USER, "--file", str(key_file), *flags)


def get_keys(key: str | None) -> Callable[[Guest], Outcome]:
    def check(guest: Guest) -> Outcome:
        done = guest.virsh("get-user-sshkeys", "{}", USER)
        if done.returncode:
            return Outcome(False, f"FAIL: {done.stderr.strip()}")
        keys = [line for line in done.stdout.splitlines() if line.strip()]
        expected = [key] if key else []
        return Outcome(
            keys == expected,
            f"ok: {len(keys)} key(s)" if keys == expected else f"FAIL: {keys}",
            keys,
        )

    return check


def agent_info(guest: Guest) -> Outcome:
    done = guest.virsh("qemu-agent-command", "{}", '{"execute":"guest-info"}')
    if done.returncode:
        return Outcome(False, f"FAIL: {done.stderr.strip()}")
    info = json.loads(done.stdout)["return"]
    enabled = [c["name"] for c in info["supported_commands"] if c["enabled"]]
    return Outcome(True, f"ok: version {info['version']}, {len(enabled)} commands")


def agent_error(guest: Guest) -> Outcome:
    """An error reply comes through libvirt with the agent's text; the texts compare."""
    request = {"execute": "guest-file-open", "arguments": {"path": "/nonexistent/file"}}
    done = guest.virsh("qemu-agent-command", "{}", json.dumps(request))
    text = done.stderr.strip()
    return Outcome(done.returncode != 0 and "No such file" in text, f"ok: {text[:40]}...", text)


def ssh_key(directory: Path) -> Path:
    """A real ssh-keygen public key file (it ends in a newline, as they all do)."""
    key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "libvirt-test", "-f", str(key)],
        check=True,
    )
    return key.with_suffix(".pub")


def test_virsh_drives_both_agents_alike(
    guests: dict[str, Guest],
    comparison: Comparison,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    pub = ssh_key(tmp_path)
    key = pub.read_text().strip()
    checks: list[tuple[str, Callable[[Guest], Outcome]]] = [
        ("guestinfo (all groups)", guestinfo()),
        *(
            (f"guestinfo --{group}", guestinfo(f"--{group}"))
            for group in ("user", "os", "timezone", "hostname", "filesystem", "disk", "interface")
        ),
        ("domfsinfo", virsh_text("domfsinfo", "{}", shown=r"/mnt/scratch .*")),
        ("domifaddr --source agent", virsh_text(*ADDRESSES, shown=r"\S+ +\S+ +ipv4 +(\S+)")),
        ("domhostname", virsh_text("domhostname", "{}")),
        ("domtime", domtime),
        ("domtime --sync", domtime_sync),
        ("domfsfreeze", freeze()),
        ("domfsthaw", thaw),
        ("domfsfreeze --mountpoint", freeze("--mountpoint", SCRATCH)),
        ("domfsthaw (after --mountpoint)", thaw),
        ("domfstrim", succeeds("domfstrim", "{}")),
        ("domfstrim --minimum", succeeds("domfstrim", "{}", "--minimum", "4096")),
        ("guestvcpus", virsh_text("guestvcpus", "{}", shown=r"online\s*: \S+")),
        ("set-user-password", set_password),
        ("set-user-sshkeys --file KEY.pub", set_keys(pub)),
        ("get-user-sshkeys (one key)", get_keys(key)),
        ("set-user-sshkeys --remove --file", set_keys(pub, "--remove")),
        ("get-user-sshkeys (none left)", get_keys(None)),
        (
            "guest-agent-timeout --timeout 10",
            succeeds("guest-agent-timeout", "{}", "--timeout", "10"),
        ),
        ("guest-agent-timeout (default)", succeeds("guest-agent-timeout", "{}")),
        ("qemu-agent-command guest-info", agent_info),
        ("qemu-agent-command, error reply", agent_error),
    ]
    for name, check in checks:
        comparison.run(guests, name, check)
    with capsys.disabled():
        print(f"\nlibvirt checks, {time.monotonic() - started:.1f} s:\n{comparison.table()}")
    problems = comparison.problems()
    assert not problems, "\n".join(problems)


CLIENT = [sys.executable, "-m", "agent.host.cli"]
COPY_TIMEOUT = 120.0  # seconds for one exchange with a TCG guest on a busy host


async def test_client_over_libvirt(guests: dict[str, Guest], tmp_path: Path) -> None:
    """QgaClient and trio-qga-client through libvirt, on the same domains."""
    pytest.importorskip("libvirt", reason="libvirt-python: scripts/setup --test installs it")
    guest = guests["trio-qga"]
    client = await QgaClient.connect_libvirt(
        guest.host.uri, guest.domain.name, request_timeout=COPY_TIMEOUT
    )
    async with client:
        await client.ping()
        assert (await client.info()).version == "0.1.0"
        piece = client.channel.write_chunk
        content = os.urandom(3 * piece + 3)  # four of the transport's pieces
        seen: list[int] = []
        assert await client.write_file("/run/big", content, lambda d, t: seen.append(d)) == len(
            content
        )
        assert seen == [piece, 2 * piece, 3 * piece, len(content)]
        assert await client.read_file("/run/big") == content
        result = await client.exec("/bin/sh", ["-c", "echo hi; echo oops >&2; exit 3"])
        assert (result.stdout, result.stderr, result.shell_status) == (b"hi\n", b"oops\n", 3)
        assert await client.fsfreeze_freeze([SCRATCH]) == 1
        assert await client.fsfreeze_status() == "frozen"
        assert await client.fsfreeze_thaw() == 1
        with pytest.raises(CommandNotFound):
            await client.execute("guest-no-such-command")
        with pytest.raises(AgentError, match="No such file") as missing:
            await client.read_file("/nonexistent/file")
        assert missing.value.error_class == "GenericError"

    script = ["/bin/sh", "-c", "echo streamed; exit 4"]
    one = ["--connect", guest.host.uri, "--domain", guest.domain.name]
    run = await trio.run_process(
        [*CLIENT, *one, "run", "--", *script], capture_stdout=True, check=False
    )
    assert (run.returncode, run.stdout) == (4, b"streamed\n")  # the run subcommand too

    names = {agent: g.domain.name for agent, g in guests.items()}
    each = ["--connect", guest.host.uri, "--domain", f"qga-test-*-{os.getpid()}"]
    info = await trio.run_process([*CLIENT, *each, "info", "--json"], capture_stdout=True)
    *results, _ = (json.loads(line) for line in info.stdout.splitlines())
    versions = {r["target"]: r["return"]["version"] for r in results}
    assert versions == {names["qemu-ga"]: "7.2.22", names["trio-qga"]: "0.1.0"}

    frozen_check = " && ".join(
        f"virsh -c '{guest.host.uri}' qemu-agent-command {name} "
        """'{"execute":"guest-fsfreeze-status"}' | grep -q frozen"""
        for name in names.values()
    )
    cycle = await trio.run_process(
        [*CLIENT, *each, "--json", "fsfreeze", "freeze-thaw", "--run", frozen_check],
        capture_stdout=True,
    )
    *frozen, summary = (json.loads(line) for line in cycle.stdout.splitlines())
    report = summary["summary"]
    assert (report["all_frozen"], report["command"]["status"], report["failed"]) == (True, 0, 0)
    assert {r["return"]["thawed"] for r in frozen} == {1}

    one_missing = ["--domain", names["trio-qga"], "--domain", "qga-test-no-such-domain"]
    ping = await trio.run_process(
        [*CLIENT, "--connect", guest.host.uri, *one_missing, "ping"],
        capture_stdout=True,
        check=False,
    )
    assert ping.returncode == 1
    lines = ping.stdout.decode()
    assert re.search(rf"{names['trio-qga']} +ok", lines)
    assert re.search(r"qga-test-no-such-domain +FAILED", lines)
    assert "2 domains: 1 ok, 1 failed" in lines


POWER_DEADLINE = 240.0  # seconds for a guest to reboot (boot, then its agent) or power off


def reboot(guest: Guest) -> Outcome:
    """reboot --mode agent: the guest boots again and its agent answers."""
    before, started = guest.domain.boots(), time.monotonic()
    done = guest.virsh("reboot", "{}", "--mode", "agent")
    if done.returncode:
        return Outcome(False, f"FAIL: {done.stderr.strip()}")
    deadline = started + POWER_DEADLINE
    while guest.domain.boots() == before:
        if time.monotonic() > deadline:
            return Outcome(False, "FAIL: the guest did not boot again")
        time.sleep(0.2)
    guest.wait_for_agent(deadline)
    return Outcome(True, f"ok: booted, agent back in {time.monotonic() - started:.0f} s")


def shutdown(guest: Guest) -> Outcome:
    """shutdown --mode agent: the transient domain goes away."""
    started = time.monotonic()
    done = guest.virsh("shutdown", "{}", "--mode", "agent")
    if done.returncode:
        return Outcome(False, f"FAIL: {done.stderr.strip()}")
    while guest.running():
        if time.monotonic() > started + POWER_DEADLINE:
            return Outcome(False, "FAIL: the domain still runs")
        time.sleep(0.2)
    return Outcome(True, f"ok: powered off in {time.monotonic() - started:.0f} s")


def test_power_through_the_agent(
    guests: dict[str, Guest], comparison: Comparison, capsys: pytest.CaptureFixture[str]
) -> None:
    """Last, as it ends the domains: reboot, then shutdown, both through the agent."""
    started = time.monotonic()
    power = Comparison()
    power.run(guests, "reboot --mode agent", reboot)
    power.run(guests, "shutdown --mode agent", shutdown)
    comparison.rows += power.rows
    with capsys.disabled():
        print(f"\nlibvirt power checks, {time.monotonic() - started:.1f} s; all checks:")
        print(comparison.table())
    problems = power.problems()
    assert not problems, "\n".join(problems)
