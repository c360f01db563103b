"""The client's way through libvirt, for guests whose agent channel libvirt owns.

A host tool cannot open the channel of a libvirt domain: libvirt holds it, and passes
commands on with ``virDomainQemuAgentCommand`` (libvirt-python's
``libvirt_qemu.qemuAgentCommand``), syncing with the agent (``guest-sync``) when it
connects and after a timeout. The calls block, so they run in worker threads
(``trio.to_thread``), never on the event loop. libvirt's URIs reach other hosts too
(``qemu+ssh://host/system``).

What libvirt changes, compared with a stream of our own:

- An error reply reaches us as libvirt's error text, ``unable to execute QEMU agent
  command 'NAME': DESC``: the description survives, the error class does not. It is
  ``CommandNotFound`` when the description says so (qemu-ga's and trio-qga's texts for a
  missing or disabled command), else ``GenericError``, the class of every other error
  both agents send.
- One request at a time per domain (libvirt's agent job), each ~5-15 ms through libvirt
  to a TCG guest whatever its size: files go in pieces as big as libvirt handles well.
- Into the guest, 96 KiB a guest-file-write (128 KiB of base64). libvirtd writes a
  request to QEMU's socket with ``safewrite``, and when a write is partial and the next
  one would block, it loses the count of what went out and writes the whole request
  again (``qemuAgentIOWrite``, libvirt 9.0 and since): a request bigger than the
  socket's buffer (net.core.wmem_default, 208 KiB here; a 160 KiB write passed, 168 KiB
  failed) reaches the agent as its first part and then all of it. Both agents answer
  the garbled input with a parse error, which libvirt drops since it comes before the
  request is all written; qemu-ga's parser may err again on a later fragment, in time to
  be taken as the reply, while trio-qga reports a garbled request once and skips to its
  end, so libvirt waits out its timeout. The agents are not at fault: the pieces stay
  small.
- Out of the guest, 384 KiB a guest-file-read. libvirtd reads a reply 1 KiB at a time
  and looks for its end from the start of what it has each time, so its CPU time per
  byte grows with the reply's size, while each request costs it some too: per MiB
  copied, ~25 ms at 384 KiB, 43 ms at 48 KiB, 33 ms at 768 KiB.
- libvirt waits for a reply to every command. One that sends none (``guest-shutdown``,
  ``guest-suspend-*``) ends in libvirt's timeout: after a ``guest-ping`` has just been
  answered, that timeout is taken as the command delivered.
"""

from __future__ import annotations

import json
import re
from typing import Any

import trio

from agent.host.errors import AgentTimeout, ClientError

READ_CHUNK = 384 * 1024  # bytes per guest-file-read (see above)
WRITE_CHUNK = 96 * 1024  # bytes per guest-file-write: well below the socket's buffer
NO_REPLY_WAIT = 2  # seconds libvirt waits for the reply that a quiet command never sends
_AGENT_ERROR = re.compile(r"unable to execute QEMU agent command '[^']*': (.*)", re.DOTALL)
_NOT_FOUND = re.compile(r"The command \S+ has not been found|Command \S+ has been disabled")


def _libvirt() -> tuple[Any, Any]:
    """libvirt and libvirt_qemu, or a clear error where libvirt-python is missing."""
    try:
        import libvirt
        import libvirt_qemu
    except ImportError as err:
        raise ClientError(
            "the libvirt transport needs libvirt-python: pip install 'trio-qga[libvirt]'"
        ) from err
    # libvirt prints every error to stderr unless a handler takes it: ours are raised.
    libvirt.registerErrorHandler(_ignore, None)
    return libvirt, libvirt_qemu


def _ignore(context: object, error: object) -> None:
    """libvirt's error callback: the error is raised as libvirtError anyway."""


class LibvirtConnection:
    """One libvirt connection, shared by the channels of its domains (it is thread-safe)."""

    def __init__(self, uri: str, connection: Any, limiter: trio.CapacityLimiter) -> None:
        self.uri = uri
        self._connection = connection
        self.limiter = limiter

    @classmethod
    async def open(cls, uri: str, limit: int = 16) -> LibvirtConnection:
        libvirt, _ = _libvirt()
        limiter = trio.CapacityLimiter(limit)
        try:
            connection = await trio.to_thread.run_sync(
                libvirt.open, uri, limiter=limiter, abandon_on_cancel=True
            )
        except libvirt.libvirtError as err:
            raise ClientError(f"cannot connect to {uri}: {err.get_error_message()}") from err
        return cls(uri, connection, limiter)

    async def run(self, function: Any, *args: Any) -> Any:
        """``function(*args)`` in a worker thread, within the connection's limit."""
        return await trio.to_thread.run_sync(
            function, *args, limiter=self.limiter, abandon_on_cancel=True
        )

    async def domain_names(self) -> list[str]:
        """The running domains' names."""
        libvirt, _ = _libvirt()
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        try:
            domains = await self.run(self._connection.listAllDomains, flags)
        except libvirt.libvirtError as err:
            raise ClientError(f"{self.uri}: {err.get_error_message()}") from err
        return sorted(domain.name() for domain in domains)

    async def channel(self, name: str, request_timeout: float) -> LibvirtChannel:
        """The channel to domain ``name``'s agent; looking it up is a request too, with
        its timeout (a libvirtd that hangs must not hold the caller)."""
        libvirt, _ = _libvirt()
        try:
            with trio.fail_after(request_timeout):
                domain = await self.run(self._connection.lookupByName, name)
        except trio.TooSlowError as err:
            raise AgentTimeout(
                f"{name}: libvirt did not answer within {request_timeout} s"
            ) from err
        except libvirt.libvirtError as err:
            raise ClientError(f"{name}: {err.get_error_message()}") from err
        return LibvirtChannel(self, domain, request_timeout)

    async def aclose(self) -> None:
        libvirt, _ = _libvirt()
        try:
            await self.run(self._connection.close)
        except libvirt.libvirtError as err:
            raise ClientError(f"{self.uri}: {err.get_error_message()}") from err


class LibvirtChannel:
    """A :class:`agent.host.client.Channel` through libvirt to one domain's agent."""

    read_chunk = READ_CHUNK
    write_chunk = WRITE_CHUNK

    def __init__(
        self,
        connection: LibvirtConnection,
        domain: Any,
        timeout: float,
        *,
        owns_connection: bool = False,
    ) -> None:
        self.connection = connection
        self.domain = domain
        self.timeout = timeout
        self._owns_connection = owns_connection

    @classmethod
    async def open(cls, uri: str, domain: str, request_timeout: float) -> LibvirtChannel:
        """A channel with a connection of its own, closed with it."""
        connection = await LibvirtConnection.open(uri)
        try:
            channel = await connection.channel(domain, request_timeout)
        except BaseException:
            await connection.aclose()
            raise
        channel._owns_connection = True
        return channel

    async def resync(self) -> None:
        """Nothing to do: libvirt syncs with the agent before every command."""

    async def exchange(self, command: str, request: dict[str, Any], *, reply: bool) -> Any:
        libvirt, libvirt_qemu = _libvirt()
        if not reply:  # a timeout will be its only answer: first make sure the agent is there
            await self.exchange("guest-ping", {"execute": "guest-ping"}, reply=True)
        seconds = max(1, round(self.timeout)) if reply else NO_REPLY_WAIT
        try:
            with trio.fail_after(self.timeout + 5):  # libvirt's own timeout comes first
                text = await self.connection.run(
                    libvirt_qemu.qemuAgentCommand, self.domain, json.dumps(request), seconds, 0
                )
        except trio.TooSlowError as err:
            raise AgentTimeout(f"{command}: no reply within {self.timeout} s") from err
        except libvirt.libvirtError as err:
            return _error_reply(command, err, libvirt, reply)
        return json.loads(text) if reply else None

    async def aclose(self) -> None:
        if self._owns_connection:
            await self.connection.aclose()


def _error_reply(command: str, err: Any, libvirt: Any, reply: bool) -> dict[str, Any] | None:
    """libvirt's error as the agent's error reply, where it is one; else raise."""
    message = err.get_error_message() or str(err)
    found = _AGENT_ERROR.search(message)
    if found:
        desc = found[1]
        kind = "CommandNotFound" if _NOT_FOUND.search(desc) else "GenericError"
        return {"error": {"class": kind, "desc": desc}}
    if err.get_error_code() == libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
        if "not connected" in message:
            raise ClientError(f"{command}: {message}") from err
        if not reply:
            return None  # delivered; no reply was coming
        raise AgentTimeout(f"{command}: {message}") from err
    raise ClientError(f"{command}: {message}") from err
