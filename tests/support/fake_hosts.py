"""Hypervisors and guests in this process, as a fleet command sees libvirt: for the fast
tests of many hosts (``agent.host.hosts.HostConnection`` and ``client.Channel``).

A :class:`FakeHost` is one URI; :func:`fake_libvirt` puts a set of them in place of
``LibvirtConnection.open``. A host may refuse connections (``down``), or hang
(``hung``: from then on every call to it waits forever, as calls to a stopped libvirtd
do). A :class:`FakeGuest` answers the commands a fleet sends, with the delays and
failures a test sets, and records its freezes and thaws with their times.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from agent.host.errors import AgentTimeout, ClientError

Reply = dict[str, Any]


@dataclass
class FakeGuest:
    """One domain's agent."""

    name: str
    version: str = "0.1.0"
    freeze_delay: float = 0.0
    refuse_freeze: bool = False
    busy_thaws: int = 0  # thaws that do not reach it first (libvirt busy with a freeze)
    exec_seconds: float = 0.0
    frozen: bool = False
    freezes: int = 0
    thaws: int = 0
    frozen_times: list[tuple[float, float]] = field(default_factory=list)  # (frozen, thawed)
    _frozen_at: float = 0.0
    _exec_end: float = 0.0

    async def answer(self, command: str, arguments: dict[str, Any]) -> Reply:
        if command == "guest-ping":
            return {"return": {}}
        if command == "guest-info":
            return {"return": {"version": self.version, "supported_commands": []}}
        if command in ("guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list"):
            return await self._freeze()
        if command == "guest-fsfreeze-thaw":
            return self._thaw()
        if command == "guest-fsfreeze-status":
            return {"return": "frozen" if self.frozen else "thawed"}
        if command == "guest-exec":
            self._exec_end = trio.current_time() + self.exec_seconds
            return {"return": {"pid": 42}}
        if command == "guest-exec-status":
            if trio.current_time() < self._exec_end:
                return {"return": {"exited": False}}
            out = base64.b64encode(self.name.encode()).decode()
            return {"return": {"exited": True, "exitcode": 0, "out-data": out}}
        return {"error": {"class": "CommandNotFound", "desc": f"no {command} here"}}

    async def _freeze(self) -> Reply:
        self.freezes += 1
        await trio.sleep(self.freeze_delay)
        if self.refuse_freeze:
            return {"error": {"class": "GenericError", "desc": "fsfreeze hook has failed"}}
        self.frozen, self._frozen_at = True, trio.current_time()
        return {"return": 1}

    def _thaw(self) -> Reply:
        if self.busy_thaws:
            self.busy_thaws -= 1
            raise ClientError("guest-fsfreeze-thaw: Guest agent not available for now")
        self.thaws += 1
        if not self.frozen:
            return {"return": 0}
        self.frozen = False
        self.frozen_times.append((self._frozen_at, trio.current_time()))
        return {"return": 1}


@dataclass
class Load:
    """Commands in progress, and the most there were at once."""

    running: int = 0
    peak: int = 0

    def __enter__(self) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)

    def __exit__(self, *exc: object) -> None:
        self.running -= 1


class FakeHost:
    """One libvirt URI and its running domains. ``own``: the commands in progress on its
    domains; ``load``: those of every host that :func:`fake_libvirt` serves with it."""

    def __init__(self, uri: str, *guests: FakeGuest, down: bool = False) -> None:
        self.uri = uri
        self.guests = {guest.name: guest for guest in guests}
        self.down = down
        self.hung = False
        self.opened = 0
        self.closed = 0
        self.own = Load()
        self.load = Load()

    @property
    def peak(self) -> int:
        return self.own.peak

    async def call(self) -> None:
        """Any call through this host's connection: forever, once it hangs."""
        if self.hung:
            await trio.sleep_forever()
        await trio.sleep(0.001)

    async def domain_names(self) -> list[str]:
        await self.call()
        return sorted(self.guests)

    async def channel(self, name: str, request_timeout: float) -> FakeChannel:
        await self.call()
        if name not in self.guests:
            raise ClientError(f"{name}: Domain not found: no domain with matching name")
        return FakeChannel(self, self.guests[name], request_timeout)

    async def aclose(self) -> None:
        await self.call()
        self.closed += 1


class FakeChannel:
    """A domain's agent channel through its host; a request has the client's timeout,
    as through libvirt."""

    read_chunk = write_chunk = 4096

    def __init__(self, host: FakeHost, guest: FakeGuest, timeout: float) -> None:
        self.host, self.guest, self.timeout = host, guest, timeout

    async def exchange(self, command: str, request: dict[str, Any], *, reply: bool) -> Any:
        try:
            with self.host.own, self.host.load, trio.fail_after(self.timeout):
                await self.host.call()
                return await self.guest.answer(command, request.get("arguments", {}))
        except trio.TooSlowError as err:
            raise AgentTimeout(f"{command}: no reply within {self.timeout} s") from err

    async def resync(self) -> None:
        """Nothing to do, as through libvirt."""

    async def aclose(self) -> None:
        """The connection is the host's."""


def fake_libvirt(monkeypatch: pytest.MonkeyPatch, *hosts: FakeHost) -> dict[str, FakeHost]:
    """``LibvirtConnection.open`` gives these hosts by URI; an unknown URI, or a host
    that is down, is refused as libvirt refuses it. Returns the hosts by URI."""
    from agent.host import libvirt_channel

    by_uri = {host.uri: host for host in hosts}
    load = Load()
    for host in hosts:
        host.load = load

    async def open_connection(uri: str, limit: int = 16) -> FakeHost:
        host = by_uri.get(uri)
        if host is None or host.down:
            raise ClientError(f"cannot connect to {uri}: Failed to connect socket")
        await host.call()
        host.opened += 1
        return host

    monkeypatch.setattr(libvirt_channel.LibvirtConnection, "open", open_connection)
    return by_uri


def guests(*names: str, **options: Any) -> list[FakeGuest]:
    return [FakeGuest(name, **options) for name in names]
