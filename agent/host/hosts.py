"""The hosts of a fleet command: each connection opened once, all at once, each under a
time limit; the running domains of each; all closed at the end, a hung host included.

A host that cannot be reached (refused, down, or no answer within its time limit) is
reported by :func:`reach_hosts` with why, and holds up nothing: the other hosts are
opened alongside it. Closing gives each connection a moment, then leaves it: a call to
a hung libvirtd never returns, and its worker thread is abandoned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from agent.host.client import Channel
from agent.host.errors import ClientError
from agent.host.fleet import ErrorInfo, error_info
from agent.host.inventory import Host

CLOSE_TIMEOUT = 5.0  # seconds to close a host's connection before leaving it


class HostConnection(Protocol):
    """What a fleet needs of one host (a :class:`LibvirtConnection`)."""

    async def domain_names(self) -> list[str]: ...

    async def channel(self, name: str, request_timeout: float) -> Channel: ...

    async def aclose(self) -> None: ...


Opener = Callable[[str, int], Awaitable[HostConnection]]  # (URI, jobs) -> connection


@dataclass
class Reached:
    """One host: its connection and running domains, or why there are none."""

    host: Host
    connection: HostConnection | None = None
    running: list[str] = field(default_factory=list)
    error: ErrorInfo | None = None


@asynccontextmanager
async def reach_hosts(
    hosts: Sequence[Host], opener: Opener, *, jobs: int, each: float
) -> AsyncIterator[dict[str, Reached]]:
    """Every host connected and its running domains listed at once, ``each`` seconds
    for each host; by label. The connections are closed on the way out."""
    reached = {host.label: Reached(host) for host in hosts}

    async def reach(entry: Reached) -> None:
        uri = entry.host.uri
        try:
            with trio.fail_after(each):
                entry.connection = await opener(uri, jobs)
                entry.running = await entry.connection.domain_names()
        except trio.TooSlowError:
            entry.error = ErrorInfo("Timeout", f"{uri}: no answer within {each:g} s")
        except ClientError as err:
            entry.error = error_info(err)

    try:
        async with trio.open_nursery() as nursery:
            for entry in reached.values():
                nursery.start_soon(reach, entry)
        yield reached
    finally:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for entry in reached.values():
                    if entry.connection is not None:
                        nursery.start_soon(_close, entry.connection)


async def _close(connection: HostConnection) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await connection.aclose()
        except ClientError:
            pass  # gone already: nothing left to close
