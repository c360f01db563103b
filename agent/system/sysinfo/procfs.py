"""/proc files, parsed into qemu-ga's reply shapes (qga/commands-linux.c).

psutil covers CPU and disk statistics too, but not in the shape the wire needs:
its per-CPU times are a list without CPU numbers (wrong as soon as a vCPU is
offline, when /proc/stat skips it), and its disk counters lack the major and
minor numbers, the in-flight count and the discard and flush counters. The
files are short, line-per-record and documented in proc(5) and the kernel's
Documentation/admin-guide/iostats.rst, so they are read directly.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

# /proc/stat: the columns after "cpuN", in order (proc(5)).
_CPU_FIELDS = (
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guestnice",
)


def parse_cpustats(text: str, clock_ticks: int) -> list[dict[str, Any]]:
    """One GuestCpuStats per ``cpuN`` line, in milliseconds as qemu-ga gives them.

    The summary ``cpu`` line is skipped; columns an older kernel does not have
    are absent from the reply (user, nice, system and idle are always there).
    """
    stats = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        try:
            cpu = int(fields[0][3:])
            ticks = [int(value) for value in fields[1 : 1 + len(_CPU_FIELDS)]]
        except ValueError:
            continue
        if len(ticks) < 4:
            continue
        entry: dict[str, Any] = {"type": "linux", "cpu": cpu}
        for name, value in zip(_CPU_FIELDS, ticks, strict=False):
            entry[name] = value * 1000 // clock_ticks
        stats.append(entry)
    return stats


# /proc/diskstats: the counters after "major minor name", in the kernel's order.
_DISK_FIELDS = (
    "read-ios",
    "read-merges",
    "read-sectors",
    "read-ticks",
    "write-ios",
    "write-merges",
    "write-sectors",
    "write-ticks",
    "ios-pgr",
    "total-ticks",
    "weight-ticks",
    "discard-ios",
    "discard-merges",
    "discard-sectors",
    "discard-ticks",
    "flush-ios",
    "flush-ticks",
)
# Kernels before 2.6.25 gave partitions four counters only.
_OLD_PARTITION_FIELDS = ("read-ios", "read-sectors", "write-ios", "write-sectors")
# The counters in the schema's order (GuestDiskStats), the order qemu-ga sends them in.
_STATS_ORDER = (
    "read-sectors",
    "read-ios",
    "read-merges",
    "write-sectors",
    "write-ios",
    "write-merges",
    "discard-sectors",
    "discard-ios",
    "discard-merges",
    "flush-ios",
    "read-ticks",
    "write-ticks",
    "discard-ticks",
    "flush-ticks",
    "ios-pgr",
    "total-ticks",
    "weight-ticks",
)


def parse_diskstats(text: str) -> list[dict[str, Any]]:
    """One GuestDiskStatsInfo per line. A counter is present when the kernel
    gives its whole group, as qemu-ga reads them: 4 (the old partition lines),
    11, then the 4 discard counters, then the 2 flush counters."""
    disks = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7:
            continue
        try:
            major, minor = int(fields[0]), int(fields[1])
            counters = [int(value) for value in fields[3:]]
        except ValueError:
            continue
        if len(counters) == 4:
            names: tuple[str, ...] = _OLD_PARTITION_FIELDS
        else:
            # qemu-ga takes the counters in whole groups: 11, then discard (+4), then flush (+2).
            size = max((n for n in (11, 15, 17) if n <= len(counters)), default=0)
            names = _DISK_FIELDS[:size]
        found = dict(zip(names, counters, strict=False))
        disks.append(
            {
                "name": fields[2],
                "major": major,
                "minor": minor,
                "stats": {name: found[name] for name in _STATS_ORDER if name in found},
            }
        )
    return disks


def _s32(text: str) -> int:
    """A 32-bit hexadecimal field read as qemu-ga's ``%x`` into an int does."""
    value = int(text, 16) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _ipv4(hex_field: str) -> str:
    """/proc/net/route's addresses: a host-order 32-bit word in hex."""
    return socket.inet_ntoa(struct.pack("=I", int(hex_field, 16)))


def parse_ipv4_routes(text: str) -> list[dict[str, Any]]:
    """GuestNetworkRoute entries (version 4) of /proc/net/route; its header is skipped."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 11:
            continue
        try:
            iface = fields[0]
            destination, gateway, mask = (_ipv4(fields[i]) for i in (1, 2, 7))
            flags = int(fields[3], 16)
            refcnt, use, metric, mtu, window, irtt = (int(fields[i]) for i in (4, 5, 6, 8, 9, 10))
        except (ValueError, struct.error):
            continue
        routes.append(
            {  # in the schema's order, as qemu-ga sends them
                "iface": iface,
                "destination": destination,
                "metric": metric,
                "gateway": gateway,
                "mask": mask,
                "irtt": irtt,
                "flags": flags,
                "refcnt": refcnt,
                "use": use,
                "window": window,
                "mtu": mtu,
                "version": 4,
            }
        )
    return routes


def _ipv6(hex_field: str) -> str:
    return str(ipaddress.IPv6Address(bytes.fromhex(hex_field)))


def parse_ipv6_routes(text: str) -> list[dict[str, Any]]:
    """GuestNetworkRoute entries (version 6) of /proc/net/ipv6_route (no header)."""
    routes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            destination, source, nexthop = (_ipv6(fields[i]) for i in (0, 2, 4))
            destination_prefix, source_prefix = int(fields[1], 16), int(fields[3], 16)
            metric, refcnt, use, flags = (_s32(fields[i]) for i in (5, 6, 7, 8))
        except ValueError:
            continue
        routes.append(
            {  # in the schema's order, as qemu-ga sends them
                "iface": fields[9],
                "destination": destination,
                "metric": metric,
                "flags": flags & 0xFFFFFFFF,
                "refcnt": refcnt,
                "use": use,
                "desprefixlen": str(destination_prefix),
                "source": source,
                "srcprefixlen": str(source_prefix),
                "nexthop": nexthop,
                "version": 6,
            }
        )
    return routes
