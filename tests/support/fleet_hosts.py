"""Two hypervisors of our own for trio-qga-client's fleets (``tests/test_fleet_hosts.py``,
``benchmarks/bench_fleet.py``): two libvirt daemons (``libvirt_host``), each in its own
mount namespace with its own socket, so two URIs. Host ``a`` runs a trio-qga domain and
a qemu-ga domain, host ``b`` a trio-qga domain: three small TCG domains, booted at once.
Both trio-qga domains have the same name, as domains on two hypervisors may.

The trio-qga guests run with ``--thaw-timeout`` (:data:`THAW_TIMEOUT`), the safety net
of a fleet, and with an fsfreeze hook that does what the test asks through files it
writes in the domain's exchange directory (a host directory shared with the guest at
its own path, over 9p without a cache): ``freeze-sleep`` (seconds to wait before a
freeze), ``freeze-fail`` (refuse the freeze). Without them it lets every freeze through
at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.libvirt_host import GuestDomain, LibvirtHost

GUEST = Path(__file__).with_name("libvirt-guest")
PORT = "/dev/virtio-ports/org.qemu.guest_agent.0"
SCRATCH = "/mnt/scratch"  # the ext4 disk every domain mounts (libvirt-guest): what is frozen
THAW_TIMEOUT = 25  # seconds: trio-qga's --thaw-timeout in these guests
BOOT_DEADLINE = 420.0  # seconds for three TCG domains to boot on a busy 2-core host
HOOK = """\
#!/bin/sh
# The fleet test's fsfreeze hook: it does what the files the test writes beside it say.
[ "$1" = freeze ] || exit 0
exchange=$(dirname "$0")
if [ -e "$exchange/freeze-sleep" ]; then sleep "$(cat "$exchange/freeze-sleep")"; fi
if [ -e "$exchange/freeze-fail" ]; then echo "the test refuses this freeze" >&2; exit 1; fi
exit 0
"""
LAYOUT = (("a", "qemu-ga"), ("a", "trio-qga"), ("b", "trio-qga"))  # as the client orders them


@dataclass
class FleetDomain:
    """One domain of the fleet: its host's label, its agent, what libvirt runs."""

    label: str
    agent: str
    host: LibvirtHost
    domain: GuestDomain

    @property
    def name(self) -> str:
        """As trio-qga-client names it: LABEL:DOMAIN."""
        return f"{self.label}:{self.domain.name}"

    @property
    def exchange(self) -> Path:
        """The exchange directory: the same path on the host and in the guest."""
        return exchange_of(self.domain.base)

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``virsh ARGS`` on the domain's host, the domain's name in place of ``{}``."""
        return self.host.virsh(*(self.domain.name if arg == "{}" else arg for arg in args))

    def agent_command(self, execute: str) -> Any:
        done = self.virsh("qemu-agent-command", "{}", json.dumps({"execute": execute}))
        if done.returncode != 0:
            raise AssertionError(f"{self.name}: {execute}: {done.stderr.strip()}")
        return json.loads(done.stdout)["return"]

    def frozen(self) -> bool:
        status: str = self.agent_command("guest-fsfreeze-status")
        return status == "frozen"

    def set_hook(self, name: str, value: str | None) -> None:
        """Write (or, with None, remove) the hook's file ``name``."""
        path = self.exchange / name
        if value is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(value)


@dataclass
class Fleet:
    hosts: dict[str, LibvirtHost]
    domains: list[FleetDomain]

    def connect(self) -> list[str]:
        """trio-qga-client's options for both hosts."""
        return [arg for label, host in self.hosts.items() for arg in ("-c", f"{label}={host.uri}")]

    def inventory(self, path: Path) -> Path:
        """An inventory file of both hosts, each with its fleet's glob."""
        path.write_text(
            "".join(f"{label} {host.uri} 'fleet-*'\n" for label, host in self.hosts.items())
        )
        return path

    def thaw_all(self) -> None:
        """Whatever a failed test left frozen, thawed."""
        for domain in self.domains:
            if domain.host.daemon is not None and domain.host.daemon.poll() is None:
                domain.virsh("domfsthaw", "{}")


def exchange_of(domain_base: Path) -> Path:
    return domain_base / "x"


def _agent(agent: str, qemu_ga: str, hook: Path | None) -> list[str]:
    if agent == "qemu-ga":
        return [qemu_ga, "-f", "/run/qemu-ga.pid"]
    command = [sys.executable, "-m", "agent", "-f", "/run/trio-qga.pid"]
    command += ["--thaw-timeout", str(THAW_TIMEOUT)]
    return command if hook is None else [*command, "-F", str(hook)]


@contextmanager
def two_hosts(base: Path, qemu_ga: str, *, hook: bool = True) -> Iterator[Fleet]:
    """Both daemons and the three domains, every agent answering; all stopped at the end.
    ``hook``: the trio-qga guests run the test's fsfreeze hook (a program started in the
    guest at every freeze and thaw: a benchmark goes without)."""
    started = time.monotonic()
    with ExitStack() as stack:
        hosts = {}
        for label in ("a", "b"):  # stopped in the reverse order (LibvirtHost)
            host = LibvirtHost(base / f"host-{label}")
            stack.callback(host.stop)
            host.start()
            hosts[label] = host
        domains = []
        for label, agent in LAYOUT:
            home = base / f"{label}-{agent}"
            exchange = exchange_of(home)
            exchange.mkdir(parents=True)
            hook_file = exchange / "fsfreeze-hook"
            hook_file.write_text(HOOK)
            hook_file.chmod(0o755)
            command = [str(GUEST), *_agent(agent, qemu_ga, hook_file if hook else None)]
            command += ["-m", "virtio-serial", "-p", PORT, "-t", "/run"]
            domain = GuestDomain(f"fleet-{agent}", home, command, shares=(exchange,))
            xml = domain.prepare()
            created = hosts[label].virsh("create", str(xml))
            assert created.returncode == 0, created.stderr
            domains.append(FleetDomain(label, agent, hosts[label], domain))
        deadline = time.monotonic() + BOOT_DEADLINE
        for each in domains:
            while each.virsh("qemu-agent-command", "{}", '{"execute":"guest-ping"}').returncode:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{each.name}: no agent; guest output:\n{each.domain.guest_output()}"
                    )
                time.sleep(0.5)
        fleet = Fleet(hosts, domains)
        print(
            f"two hosts, three domains answering {time.monotonic() - started:.1f} s after the start"
        )
        yield fleet
