"""guest-network-get-interfaces and -route: parsers on text, replies against `ip`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from agent.system.executor import SystemRoot
from agent.system.sysinfo.procfs import parse_ipv4_routes, parse_ipv6_routes
from tests.support.agents import AgentFactory, served
from tests.support.clients import StreamClient


async def returned(client: StreamClient, name: str) -> Any:
    reply = await client.execute(name)
    assert "return" in reply, reply
    return reply["return"]


async def ip_json(*args: str) -> Any:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    return json.loads((await trio.run_process(["ip", "-j", *args], capture_stdout=True)).stdout)


# ------------------------------------------------------------ interfaces --
async def test_interfaces_match_ip_addr(agent_client: StreamClient) -> None:
    interfaces = await returned(agent_client, "guest-network-get-interfaces")
    links = await ip_json("addr")
    assert [i["name"] for i in interfaces] == [link["ifname"] for link in links]
    for interface, link in zip(interfaces, links, strict=True):
        if link.get("address"):
            assert interface["hardware-address"] == link["address"]
        expected = [
            {
                "ip-address": a["local"],
                "ip-address-type": "ipv4" if a["family"] == "inet" else "ipv6",
                "prefix": a["prefixlen"],
            }
            for a in link.get("addr_info", [])
            if a["family"] in ("inet", "inet6")
        ]
        if expected:
            assert interface["ip-addresses"] == expected
            assert set(interface["statistics"]) == {
                f"{direction}-{counter}"
                for direction in ("rx", "tx")
                for counter in ("bytes", "packets", "errs", "dropped")
            }
        else:
            # As with qemu-ga: no addresses, no address list and no counters.
            assert "ip-addresses" not in interface
            assert "statistics" not in interface


async def test_interface_counters_are_the_kernels(agent_client: StreamClient) -> None:
    name = "lo"
    sysfs = Path("/sys/class/net") / name / "statistics"
    before = {f: int(await trio.Path(sysfs / f).read_text()) for f in ("rx_bytes", "tx_packets")}
    interfaces = await returned(agent_client, "guest-network-get-interfaces")
    after = {f: int(await trio.Path(sysfs / f).read_text()) for f in ("rx_bytes", "tx_packets")}
    stats = next(i for i in interfaces if i["name"] == name)["statistics"]
    assert before["rx_bytes"] <= stats["rx-bytes"] <= after["rx_bytes"]
    assert before["tx_packets"] <= stats["tx-packets"] <= after["tx_packets"]


# ---------------------------------------------------------------- routes --
PROC_NET_ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t5\t0\t00FFFFFF\t1500\t0\t0
short line
"""
PROC_NET_IPV6_ROUTE = (
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
)


def test_ipv4_routes_as_qemu_ga_gives_them() -> None:
    routes = parse_ipv4_routes(PROC_NET_ROUTE)
    assert routes == [
        {
            "iface": "eth0",
            "destination": "0.0.0.0",
            "gateway": "192.0.2.1",
            "mask": "0.0.0.0",
            "metric": 100,
            "flags": 3,
            "refcnt": 0,
            "use": 0,
            "mtu": 0,
            "window": 0,
            "irtt": 0,
            "version": 4,
        },
        {
            "iface": "eth0",
            "destination": "192.0.2.0",
            "gateway": "0.0.0.0",
            "mask": "255.255.255.0",
            "metric": 0,
            "flags": 1,
            "refcnt": 0,
            "use": 5,
            "mtu": 1500,
            "window": 0,
            "irtt": 0,
            "version": 4,
        },
    ]


def test_ipv6_routes_as_qemu_ga_gives_them() -> None:
    routes = parse_ipv6_routes(PROC_NET_IPV6_ROUTE)
    assert routes[1] == {
        "iface": "eth0",
        "destination": "::",
        "source": "::",
        "nexthop": "fd00::1",
        "desprefixlen": "0",
        "srcprefixlen": "0",
        "metric": 1024,
        "flags": 3,
        "refcnt": 2,
        "use": 0,
        "version": 6,
    }
    assert (routes[0]["destination"], routes[0]["desprefixlen"]) == ("fd00::", "64")
    # qemu-ga reads the metric as a signed int: the reject route's 0xffffffff is -1.
    assert (routes[2]["metric"], routes[2]["flags"]) == (-1, 0x200200)


async def test_routes_match_ip_route(agent_client: StreamClient) -> None:
    routes = await returned(agent_client, "guest-network-get-route")
    ours4 = {
        (r["destination"], r["mask"], r["gateway"], r["iface"]) for r in routes if r["version"] == 4
    }
    for route in await ip_json("-4", "route", "show", "table", "main"):
        if route.get("type", "unicast") != "unicast":
            continue
        destination, _, prefix = route["dst"].replace("default", "0.0.0.0/0").partition("/")
        mask = ".".join(
            str(b) for b in (0xFFFFFFFF << (32 - int(prefix or 32)) & 0xFFFFFFFF).to_bytes(4, "big")
        )
        gateway = route.get("gateway", "0.0.0.0")
        assert (destination, mask, gateway, route["dev"]) in ours4
    ours6 = {(r["destination"], r["desprefixlen"], r["iface"]) for r in routes if r["version"] == 6}
    for route in await ip_json("-6", "route", "show", "table", "main"):
        destination, _, prefix = route["dst"].replace("default", "::/0").partition("/")
        assert (destination, prefix or "128", route["dev"]) in ours6


async def test_routes_without_ipv6(agent_factory: AgentFactory, tmp_path: Path) -> None:
    (tmp_path / "proc/net").mkdir(parents=True)
    async with served(agent_factory(root=SystemRoot(tmp_path))) as client:
        reply = await client.execute("guest-network-get-route")
        assert reply["error"]["desc"] == 'open("/proc/net/route"): No such file or directory'
        (tmp_path / "proc/net/route").write_text(PROC_NET_ROUTE)
        assert len(await returned(client, "guest-network-get-route")) == 2
