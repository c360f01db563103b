"""Whatever befalls one client ends that client's session only: the next one is served.

The agent runs its real transport (``serve_transport`` on a listening socket,
or on a device); the failures are injected into the sockets and devices it
is given, or are real (a client that leaves mid-reply, a pseudo-terminal
whose other side is gone).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import tty
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from agent import Agent
from agent.transports import listen as listen_module
from agent.transports import serve as transports_module
from agent.transports import virtio as virtio_module
from agent.transports.serve import serve_transport
from tests.support.agents import AgentFactory
from tests.support.clients import StreamClient

PONG: dict[str, object] = {"return": {}}


class FaultyConnection(socket.socket):
    """An accepted client whose next receive fails with ``fault``."""

    def __init__(self, connection: socket.socket, fault: Exception) -> None:
        super().__init__(connection.family, connection.type, fileno=connection.detach())
        self.fault = fault

    def recv(self, size: int, flags: int = 0) -> bytes:
        raise self.fault


class FaultyListener(socket.socket):
    """A listening unix socket that fails some accepts and hands out faulty clients."""

    def __init__(self, path: Path) -> None:
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM)
        self.bind(str(path))
        self.listen(8)
        self.accept_errors: list[OSError] = []
        self.client_faults: list[Exception] = []

    def accept(self) -> tuple[socket.socket, object]:
        if self.accept_errors:
            raise self.accept_errors.pop(0)
        connection, address = super().accept()
        if self.client_faults:
            return FaultyConnection(connection, self.client_faults.pop(0)), address
        return connection, address


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[FaultyListener]:
    with FaultyListener(tmp_path / "qga.sock") as sock:
        yield sock


async def ping(path: str) -> dict[str, object]:
    async with await trio.open_unix_socket(path) as stream:
        return await StreamClient(stream).execute("guest-ping")


async def dropped(stream: trio.abc.Stream) -> None:
    """The agent closed ``stream`` without a reply (unread bytes make that a reset)."""
    with trio.fail_after(10):
        try:
            data = await stream.receive_some()
        except trio.BrokenResourceError:
            return
    assert data == b""


async def serving(nursery: trio.Nursery, agent: Agent, listener: FaultyListener) -> None:
    await nursery.start(partial(agent.serve_transports, listeners=[listener]))


async def first_dropped_next_served(agent: Agent, listener: FaultyListener) -> None:
    """A first client whose session fails is dropped; the next one is served."""
    path = listener.getsockname()
    async with trio.open_nursery() as nursery:
        await serving(nursery, agent, listener)
        async with await trio.open_unix_socket(path) as first:
            # The fault is in the agent's first read: it may drop this client
            # before the request is even written.
            with contextlib.suppress(trio.BrokenResourceError):
                await first.send_all(b'{"execute":"guest-ping"}')
            await dropped(first)
        with trio.fail_after(10):
            assert await ping(path) == PONG
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("code", [errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH])
async def test_a_socket_error_ends_that_client_only(
    agent: Agent, listener: FaultyListener, code: int
) -> None:
    listener.client_faults.append(OSError(code, os.strerror(code)))
    await first_dropped_next_served(agent, listener)


async def test_an_unexpected_error_ends_that_session_only_and_is_logged(
    agent: Agent, listener: FaultyListener, caplog: pytest.LogCaptureFixture
) -> None:
    listener.client_faults.append(RuntimeError("injected bug"))
    await first_dropped_next_served(agent, listener)
    assert "a session ended on an error: RuntimeError: injected bug" in caplog.text


async def test_a_client_that_leaves_mid_reply_ends_its_session_only(
    agent: Agent, listener: FaultyListener, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 << 20))  # its reply is far more than the socket buffers
    path = listener.getsockname()
    async with trio.open_nursery() as nursery:
        await serving(nursery, agent, listener)
        async with await trio.open_unix_socket(path) as first:
            client = StreamClient(first)
            handle = (await client.execute("guest-file-open", {"path": str(big)}))["return"]
            await client.send(
                b'{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d}}'
                % (handle, 8 << 20)
            )
            assert await first.receive_some(1)  # the reply has begun; now leave
        with trio.fail_after(10):
            assert await ping(path) == PONG
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("code", [errno.ECONNABORTED, errno.EPERM, errno.EPROTO])
async def test_accept_errors_of_a_client_that_left_are_ignored(
    agent: Agent, listener: FaultyListener, code: int
) -> None:
    listener.accept_errors.append(OSError(code, os.strerror(code)))
    async with trio.open_nursery() as nursery:
        await serving(nursery, agent, listener)
        with trio.fail_after(10):
            assert await ping(listener.getsockname()) == PONG
        nursery.cancel_scope.cancel()


async def test_out_of_descriptors_backs_off_and_accepts_again(
    agent: Agent,
    listener: FaultyListener,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(listen_module, "ACCEPT_RETRY", 0.01)
    listener.accept_errors += [OSError(errno.EMFILE, os.strerror(errno.EMFILE))] * 3
    async with trio.open_nursery() as nursery:
        await serving(nursery, agent, listener)
        with trio.fail_after(10):
            assert await ping(listener.getsockname()) == PONG
        nursery.cancel_scope.cancel()
    assert caplog.text.count("cannot accept a client: Too many open files; retrying") == 3


async def test_a_failed_listening_socket_ends_the_transport(
    agent: Agent, listener: FaultyListener
) -> None:
    listener.accept_errors.append(OSError(errno.EINVAL, os.strerror(errno.EINVAL)))
    failed = pytest.RaisesExc(
        transports_module.TransportError, match="socket from systemd: Invalid argument"
    )
    with pytest.RaisesGroup(failed):
        async with trio.open_nursery() as nursery:
            await serving(nursery, agent, listener)


class PtyPorts:
    """Stand-ins for a virtio-serial port that is unplugged and plugged again:
    each opening is the master of a fresh pseudo-terminal, whose raw slave is
    the host. Reading a master whose slave has closed fails with EIO."""

    def __init__(self) -> None:
        self.hosts: trio.MemorySendChannel[int]
        self.hosts, self.opened = trio.open_memory_channel[int](10)

    @contextlib.contextmanager
    def open_port(self, path: str) -> Iterator[int]:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.hosts.send_nowait(slave)
        try:
            yield master
        finally:
            os.close(master)


async def test_a_device_error_reopens_the_device_and_the_next_host_is_served(
    agent_factory: AgentFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ports = PtyPorts()
    monkeypatch.setattr(virtio_module, "open_port", ports.open_port)
    monkeypatch.setattr(transports_module, "RETRY_INTERVAL", 0.01)
    agent = agent_factory(method="virtio-serial", path="/dev/virtio-ports/test", retry_path=True)
    with caplog.at_level(logging.WARNING):
        async with agent, trio.open_nursery() as nursery:
            await nursery.start(serve_transport, agent.config.transport, agent.serve)
            os.close(await ports.opened.receive())  # unplugged: the agent's read fails
            host = await ports.opened.receive()  # opened again
            os.set_blocking(host, False)
            async with trio.lowlevel.FdStream(host) as stream:
                with trio.fail_after(10):
                    assert await StreamClient(stream).execute("guest-ping") == PONG
            nursery.cancel_scope.cancel()
    assert "virtio-serial /dev/virtio-ports/test: Input/output error; trying again" in caplog.text
