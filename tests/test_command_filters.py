"""Command filters that guests really run, moved from qemu-ga to trio-qga unchanged.

Each filter is given as its distribution or guide gives it (a flag of the unit, or
a key of qemu-ga.conf), to the agent run as a process on a unix socket. Through the
socket, guest-info shows a command enabled exactly when the filter lets it through
and lets through every qemu-ga command that gates it (``GATES``, the table of
SECURITY.md), and each disabled command that runs a program or touches a file
answers that it is disabled; the client's ``run`` says that exec is disabled; the
log says what the filter disables. Block-lists are compared with qemu-ga 7.2
itself (it predates ``--allow-rpcs``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.clients import SocketClient
from tests.support.processes import run_agent, run_client, running_agent
from tests.support.reference import running_qemu_ga

pytestmark = pytest.mark.slow

PREFIX = "__io.github.trio-qga_"
STREAMING = tuple(
    f"{PREFIX}exec-{name}" for name in ("start", "read", "write", "close-stdin", "resize", "signal")
)
# Every extension command and the qemu-ga commands that gate it (all of them must
# pass the filter). The example plugin's commands have none (SECURITY.md).
GATES = {name: ("guest-exec", "guest-exec-status") for name in STREAMING}
FILES = tuple(f"guest-file-{name}" for name in ("open", "close", "read", "write", "seek", "flush"))
# What starts a program or touches a file the host chooses.
PROGRAMS_AND_FILES = (
    "guest-exec",
    "guest-exec-status",
    *STREAMING,
    *FILES,
    "guest-ssh-get-authorized-keys",
    "guest-ssh-add-authorized-keys",
    "guest-ssh-remove-authorized-keys",
    "guest-set-user-password",
)
EXEC_DISABLED = (
    b"trio-qga-client: CommandNotFound: exec is disabled on this agent"
    b" (guest-info shows guest-exec disabled)\n"
)


@dataclass(frozen=True)
class Filter:
    name: str
    blocked: tuple[str, ...] = ()
    allowed: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()  # as the unit passes it
    conf: str | None = None  # or as qemu-ga.conf holds it

    def passes(self, name: str) -> bool:
        return name not in self.blocked and (self.allowed is None or name in self.allowed)

    def enables(self, name: str) -> bool:
        return self.passes(name) and all(map(self.passes, GATES.get(name, ())))


def names(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


# CentOS/RHEL 7 and 8: /etc/sysconfig/qemu-ga says BLACKLIST_RPC=..., and
# qemu-guest-agent.service runs qemu-ga --blacklist=${BLACKLIST_RPC}.
RHEL_7 = "guest-file-open,guest-file-close,guest-file-read,guest-file-write,guest-file-seek,guest-file-flush,guest-exec,guest-exec-status"  # noqa: E501
# The issue's; openSUSE's qemu-guest-agent 11 package ships it as its default
# FILTER_RPC_ARGS (reported by a public Tumbleweed image build script).
EXEC_ONLY = "guest-exec,guest-exec-status"
# A NixOS hardening module found in public configurations: it overrides
# systemd.services.qemu-guest-agent.serviceConfig.ExecStart with this --block-rpcs.
NIXOS = "guest-set-time,guest-file-open,guest-file-close,guest-file-read,guest-file-write,guest-file-seek,guest-file-flush,guest-get-fsinfo,guest-set-user-password,guest-get-memory-blocks,guest-set-memory-blocks,guest-exec-status,guest-exec,guest-get-users,guest-get-osinfo,guest-get-devices,guest-ssh-get-authorized-keys,guest-ssh-add-authorized-keys,guest-ssh-remove-authorized-keys"  # noqa: E501
# RHEL 9 (here Rocky 9's qemu-guest-agent-10.1.0-17.el9): /etc/sysconfig/qemu-ga says
# FILTER_RPC_ARGS="--allow-rpcs=...", without guest-exec and guest-exec-status
# (guest-get-devices is Windows-only: not a command of trio-qga).
RHEL_9 = "guest-sync-delimited,guest-sync,guest-ping,guest-get-time,guest-set-time,guest-info,guest-shutdown,guest-fsfreeze-status,guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw,guest-fstrim,guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,guest-network-get-interfaces,guest-get-vcpus,guest-set-vcpus,guest-get-disks,guest-get-fsinfo,guest-set-user-password,guest-get-memory-blocks,guest-set-memory-blocks,guest-get-memory-block-info,guest-get-host-name,guest-get-users,guest-get-timezone,guest-get-osinfo,guest-get-devices,guest-ssh-get-authorized-keys,guest-ssh-add-authorized-keys,guest-ssh-remove-authorized-keys,guest-get-diskstats,guest-get-cpustats,guest-network-get-route,guest-get-load"  # noqa: E501
# A Proxmox VE hardening guide: qemu-ga.conf allows what backups and the web UI need.
PROXMOX_GUIDE = "guest-sync-delimited,guest-sync,guest-ping,guest-info,guest-shutdown,guest-fsfreeze-status,guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw,guest-fstrim,guest-network-get-interfaces,guest-get-osinfo,guest-get-host-name,guest-get-time"  # noqa: E501

FILTERS = [
    Filter("rhel-7", blocked=names(RHEL_7), flags=(f"--blacklist={RHEL_7}",)),
    Filter("exec-only", blocked=names(EXEC_ONLY), flags=("-b", EXEC_ONLY)),
    Filter("nixos", blocked=names(NIXOS), flags=(f"--block-rpcs={NIXOS}",)),
    Filter("rhel-9", allowed=names(RHEL_9), flags=(f"--allow-rpcs={RHEL_9}",)),
    Filter(
        "proxmox-guide",
        allowed=names(PROXMOX_GUIDE),
        conf=f"[general]\nallow-rpcs={PROXMOX_GUIDE}\n",
    ),
]
BLOCK_LISTS = [f for f in FILTERS if f.allowed is None]


def agent_flags(tmp_path: Path, filter_: Filter) -> list[str]:
    flags = [*filter_.flags, "--cache-dir", "", "-l", str(tmp_path / "agent.log")]
    if filter_.conf is not None:
        conf = tmp_path / "qemu-ga.conf"
        conf.write_text(filter_.conf)
        flags += ["-c", str(conf)]
    return flags


@contextmanager
def filtered_agent(tmp_path: Path, filter_: Filter) -> Iterator[Path]:
    tmp_path.mkdir(exist_ok=True)
    with running_agent(tmp_path, *agent_flags(tmp_path, filter_)) as (_, sock):
        yield sock


def enabled_commands(sock: Path) -> dict[str, bool]:
    client = SocketClient(sock)
    try:
        info = client.execute("guest-info")["return"]["supported_commands"]
    finally:
        client.close()
    return {command["name"]: command["enabled"] for command in info}


def client_run(sock: Path) -> subprocess.CompletedProcess[bytes]:
    return run_client(sock, "run", "--", "id")


@pytest.mark.parametrize("filter_", FILTERS, ids=[f.name for f in FILTERS])
def test_a_real_filter_disables_every_way_to_run_a_program(tmp_path: Path, filter_: Filter) -> None:
    with filtered_agent(tmp_path, filter_) as sock:
        enabled = enabled_commands(sock)
        assert set(STREAMING) <= enabled.keys()
        assert enabled == {name: filter_.enables(name) for name in enabled}
        for name in STREAMING:  # none of these filters lets guest-exec through
            assert not enabled[name]
        client = SocketClient(sock)
        try:
            for name in PROGRAMS_AND_FILES:
                if not enabled[name]:
                    assert client.execute(name, {})["error"] == {
                        "class": "CommandNotFound",
                        "desc": f"Command {name} has been disabled: the command is not allowed",
                    }
        finally:
            client.close()
        run = client_run(sock)
        assert (run.returncode, run.stdout, run.stderr) == (2, b"", EXEC_DISABLED)
    [line] = [
        line
        for line in (tmp_path / "agent.log").read_text().splitlines()
        if "command filter:" in line
    ]
    assert " INFO " in line
    disabled = [name for name, on in enabled.items() if not on]
    assert f"{len(disabled)} of {len(enabled)} commands disabled" in line
    for name in disabled:
        assert name in line


@pytest.mark.qemu_ga
@pytest.mark.parametrize("filter_", BLOCK_LISTS, ids=[f.name for f in BLOCK_LISTS])
def test_a_real_block_list_disables_what_it_does_in_qemu_ga(
    tmp_path: Path, filter_: Filter
) -> None:
    """The qemu-ga commands enabled are qemu-ga's own; its ``run`` says exec is disabled
    too, not that the agent is old."""
    with running_qemu_ga(tmp_path / "qemu-ga", *filter_.flags) as sock:
        theirs = enabled_commands(sock)
        run = client_run(sock)
        assert (run.returncode, run.stdout, run.stderr) == (2, b"", EXEC_DISABLED)
    with filtered_agent(tmp_path / "trio-qga", filter_) as sock:
        ours = enabled_commands(sock)
    common = ours.keys() & theirs.keys()
    assert {"guest-exec", "guest-file-open", "guest-info"} <= common
    assert {name: ours[name] for name in common} == {name: theirs[name] for name in common}


# ------------------------------------------------- a contradiction at start --
@pytest.mark.parametrize(
    ("flags", "conf"),
    [
        ((f"--allow-rpcs={RHEL_9},{PREFIX}exec-start",), None),
        (("-b", EXEC_ONLY, "-a", f"guest-ping,guest-exec,{PREFIX}exec-read"), None),
        ((), f"[general]\nallow-rpcs=guest-ping,{PREFIX}exec-start\n"),
    ],
)
def test_allowing_the_streaming_exec_without_guest_exec_is_refused_at_start(
    tmp_path: Path, flags: tuple[str, ...], conf: str | None
) -> None:
    if conf is not None:
        (tmp_path / "qemu-ga.conf").write_text(conf)
        flags = (*flags, "-c", str(tmp_path / "qemu-ga.conf"))
    sock = tmp_path / "qga.sock"
    result = run_agent(tmp_path, "--transport", f"unix-listen:{sock}", *flags)
    assert result.returncode == 1
    assert "--allow-rpcs names commands whose gates the command filter disables:" in result.stderr
    assert f"{PREFIX}exec-" in result.stderr
    assert "allow the gates too, or leave those commands out" in result.stderr
    assert not sock.exists()


def test_run_falls_back_to_guest_exec_when_only_the_streaming_exec_is_blocked(
    tmp_path: Path,
) -> None:
    with running_agent(tmp_path, "--cache-dir", "", "-b", f"{PREFIX}exec-start") as (_, sock):
        run = client_run(sock)
    assert run.returncode == 0
    assert run.stdout.startswith(b"uid=")
    assert run.stderr == (
        b"trio-qga-client: the agent has its streaming exec disabled: using guest-exec,"
        b" the output will come when the program has ended\n"
    )
