"""guest-network-get-interfaces and guest-network-get-route (read-only).

Interfaces, their addresses and counters come from psutil (getifaddrs() and
/proc/net/dev, the sources qemu-ga uses); routes from /proc/net/route and
/proc/net/ipv6_route through ``ctx.root``, as newer qemu-ga reads them.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError, os_error_text
from agent.system.sysinfo.procfs import parse_ipv4_routes, parse_ipv6_routes

handlers = HandlerSet()

_ADDRESS_TYPES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
_AF_LINK = socket.AF_PACKET  # what psutil.AF_LINK is on Linux


@handlers.command("guest-network-get-interfaces")
def guest_network_get_interfaces(ctx: AgentContext) -> list[dict[str, Any]]:
    import psutil  # on first use: it costs the agent's start-up otherwise

    try:
        addresses = psutil.net_if_addrs()
        counters = psutil.net_io_counters(pernic=True, nowrap=False)
        order = {name: index for index, name in socket.if_nameindex()}
    except OSError as err:
        raise GenericError(f"getifaddrs failed: {os_error_text(err)}") from err
    # qemu-ga lists interfaces in getifaddrs() order, which is the kernel's index order.
    names = sorted(addresses, key=lambda name: order.get(name, len(order)))
    return [_interface(name, addresses[name], counters.get(name)) for name in names]


def _interface(name: str, addresses: list[Any], counters: Any) -> dict[str, Any]:
    interface: dict[str, Any] = {"name": name}
    hardware = next((a.address for a in addresses if a.family == _AF_LINK), None)
    if hardware:
        interface["hardware-address"] = hardware
    ip_addresses = [_ip_address(a) for a in addresses if a.family in _ADDRESS_TYPES]
    # As with qemu-ga, an interface without IP addresses has neither list nor counters.
    if ip_addresses:
        interface["ip-addresses"] = ip_addresses
        if counters is not None:
            interface["statistics"] = {
                "rx-bytes": counters.bytes_recv,
                "rx-packets": counters.packets_recv,
                "rx-errs": counters.errin,
                "rx-dropped": counters.dropin,
                "tx-bytes": counters.bytes_sent,
                "tx-packets": counters.packets_sent,
                "tx-errs": counters.errout,
                "tx-dropped": counters.dropout,
            }
    return interface


def _ip_address(address: Any) -> dict[str, Any]:
    # psutil writes link-local IPv6 addresses with their scope ("fe80::1%eth0");
    # qemu-ga gives the bare address.
    ip = address.address.partition("%")[0]
    mask = address.netmask
    prefix = bin(int(ipaddress.ip_address(mask))).count("1") if mask else 0
    return {"ip-address": ip, "ip-address-type": _ADDRESS_TYPES[address.family], "prefix": prefix}


ROUTE_FILES = (("/proc/net/route", parse_ipv4_routes), ("/proc/net/ipv6_route", parse_ipv6_routes))


@handlers.command("guest-network-get-route")
def guest_network_get_route(ctx: AgentContext) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    missing = []
    for path, parse in ROUTE_FILES:
        try:
            text = ctx.root.path(path).read_text(errors="replace")
        except OSError as err:
            # /proc/net/ipv6_route is missing when IPv6 is disabled: give the IPv4 routes.
            missing.append(f'open("{path}"): {os_error_text(err)}')
            continue
        routes.extend(parse(text))
    if len(missing) == len(ROUTE_FILES):
        raise GenericError(missing[0])
    return routes
