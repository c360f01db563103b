"""The read-only information commands beside the real qemu-ga.

Both agents run as processes with the same environment (an os-release file of
ours through QGA_OS_RELEASE, a time zone with a non-zero offset through TZ).
Replies that cannot change between two calls must be equal; counters must lie
between two readings of qemu-ga's; and every reply must have qemu-ga's shape:
the same members present, with values of the same JSON types.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import SocketClient
from tests.support.guest_data import OS_RELEASE, OS_RELEASE_EXPECTED
from tests.support.processes import running_agent
from tests.support.reference import running_qemu_ga

pytestmark = pytest.mark.qemu_ga

TIME_ZONE = "NZST-12NZDT,M9.5.0,M4.1.0/3"


@pytest.fixture(scope="module")
def clients(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SocketClient, SocketClient]]:
    """(qemu-ga, ours), both started with the same environment."""
    workdir = tmp_path_factory.mktemp("info-diff")
    release = workdir / "os-release"
    release.write_text(OS_RELEASE)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("QGA_OS_RELEASE", str(release))
        env.setenv("TZ", TIME_ZONE)
        with (
            running_qemu_ga(workdir / "qemu-ga") as theirs,
            running_agent(_mkdir(workdir / "ours")) as (_, ours),
        ):
            pair = SocketClient(theirs), SocketClient(ours)
            yield pair
            for client in pair:
                client.close()


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def returned(client: SocketClient, name: str) -> Any:
    reply = client.execute(name)
    assert "return" in reply, (name, reply)
    return reply["return"]


def shape(value: Any) -> Any:
    """What a reply looks like without its values: member names and JSON types."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def between(low: Any, value: Any, high: Any) -> None:
    """Every number of ``value`` lies between the same member of ``low`` and ``high``."""
    if isinstance(value, dict):
        for key in value:
            between(low[key], value[key], high[key])
    elif isinstance(value, int | float) and not isinstance(value, bool):
        assert low <= value <= high
    else:
        assert low == value == high


@pytest.mark.parametrize("name", ["guest-get-host-name", "guest-get-timezone", "guest-get-users"])
def test_same_reply(clients: tuple[SocketClient, SocketClient], name: str) -> None:
    theirs, ours = clients
    assert returned(ours, name) == returned(theirs, name)


def test_timezone_offset_is_not_trivially_zero(clients: tuple[SocketClient, SocketClient]) -> None:
    _, ours = clients
    assert returned(ours, "guest-get-timezone")["offset"] in (12 * 3600, 13 * 3600)


def test_same_osinfo_from_qga_os_release(clients: tuple[SocketClient, SocketClient]) -> None:
    theirs, ours = clients
    info = returned(ours, "guest-get-osinfo")
    assert info == returned(theirs, "guest-get-osinfo")
    assert OS_RELEASE_EXPECTED.items() <= info.items()


def test_time_between_two_of_qemu_gas(clients: tuple[SocketClient, SocketClient]) -> None:
    theirs, ours = clients
    before = returned(theirs, "guest-get-time")
    now = returned(ours, "guest-get-time")
    after = returned(theirs, "guest-get-time")
    # qemu-ga's clock has microseconds: allow ours the rest of the microsecond.
    assert before <= now < after + 1000


@pytest.mark.parametrize(
    ("name", "key"),
    [("guest-get-cpustats", "cpu"), ("guest-get-diskstats", "name")],
)
def test_counters_between_two_of_qemu_gas(
    clients: tuple[SocketClient, SocketClient], name: str, key: str
) -> None:
    theirs, ours = clients
    before = {entry[key]: entry for entry in returned(theirs, name)}
    now = {entry[key]: entry for entry in returned(ours, name)}
    after = {entry[key]: entry for entry in returned(theirs, name)}
    common = before.keys() & now.keys() & after.keys()  # loop devices may come and go
    assert common
    for item in common:
        assert shape(now[item]) == shape(before[item])
        between(before[item], now[item], after[item])


def test_interfaces_as_qemu_ga(clients: tuple[SocketClient, SocketClient]) -> None:
    theirs, ours = clients
    before = returned(theirs, "guest-network-get-interfaces")
    now = returned(ours, "guest-network-get-interfaces")
    after = returned(theirs, "guest-network-get-interfaces")
    assert shape(now) == shape(before)
    for low, interface, high in zip(before, now, after, strict=True):
        statistics = interface.pop("statistics", None)
        assert interface == {k: v for k, v in low.items() if k != "statistics"}
        if statistics is not None:
            between(low["statistics"], statistics, high["statistics"])


@pytest.mark.parametrize("name", ["guest-get-load", "guest-network-get-route"])
def test_commands_newer_than_qemu_ga_7_2(
    clients: tuple[SocketClient, SocketClient], name: str
) -> None:
    theirs, ours = clients
    reply = theirs.execute(name)
    if "error" not in reply:  # a newer qemu-ga has them: compare shapes
        assert shape(returned(ours, name)) == shape(reply["return"])
        return
    assert reply["error"]["class"] == "CommandNotFound"
    assert returned(ours, name)


def _same_addresses(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert ours == theirs


def _popped(entry: dict[str, Any], key: str) -> list[Any]:
    return [entry.pop(key)] if key in entry else []


def test_disks_as_qemu_ga(clients: tuple[SocketClient, SocketClient]) -> None:
    theirs, ours = clients
    reference = {disk["name"]: disk for disk in returned(theirs, "guest-get-disks")}
    mine = {disk["name"]: disk for disk in returned(ours, "guest-get-disks")}

    def lasting(names: Any) -> set[str]:  # loop devices of other tests come and go
        return {name for name in names if not name.startswith("/dev/loop")}

    assert lasting(mine) == lasting(reference)
    for name in mine.keys() & reference.keys():
        disk, expected = dict(mine[name]), dict(reference[name])
        _same_addresses(_popped(disk, "address"), _popped(expected, "address"))
        assert disk == expected


def test_fsinfo_as_qemu_ga(clients: tuple[SocketClient, SocketClient]) -> None:
    theirs, ours = clients
    reference = returned(theirs, "guest-get-fsinfo")
    mine = returned(ours, "guest-get-fsinfo")
    common = {fs["mountpoint"] for fs in reference} & {fs["mountpoint"] for fs in mine}
    assert "/" in common
    # Same order (qemu-ga's: the mount table's, last mount first).
    assert [fs["mountpoint"] for fs in mine if fs["mountpoint"] in common] == [
        fs["mountpoint"] for fs in reference if fs["mountpoint"] in common
    ]
    by_mountpoint = {fs["mountpoint"]: fs for fs in reference}
    for fs in mine:
        if fs["mountpoint"] not in common:
            continue
        expected = by_mountpoint[fs["mountpoint"]]
        # total-bytes-privileged is QEMU 9.1's: 7.2 has not got it.
        assert set(fs) == set(expected) | {"total-bytes-privileged"}
        _same_addresses(fs["disk"], expected["disk"])
        assert {k: fs[k] for k in ("name", "type")} == {k: expected[k] for k in ("name", "type")}
        # Sizes: equal but for what was written between the two calls.
        assert fs["total-bytes"] == expected["total-bytes"]
        assert abs(fs["used-bytes"] - expected["used-bytes"]) < 64 << 20
