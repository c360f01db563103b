"""The transports without a VM: a FIFO and a pipe stand in for a virtio-serial
port, a pseudo-terminal for a serial line. ``tests/test_vm.py`` runs the same
transports on the real devices of a VM."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from agent import Agent, AgentConfig
from agent.transports import serve as transports_module
from agent.transports.serial import serve_isa_serial
from agent.transports.serve import TransportError, check_transport, serve_transport
from agent.transports.virtio import serve_port
from agent.transports.vsock import parse_address
from tests.support.agents import AgentFactory
from tests.support.clients import StreamClient
from tests.support.processes import spawn_agent

pytestmark = pytest.mark.slow

VMADDR_CID_LOCAL = 1  # the vsock loopback (socket.VMADDR_CID_LOCAL from Python 3.12)
PING = b'{"execute":"guest-ping","id":1}\n'
PONG = {"return": {}, "id": 1}


class SessionCounter:
    """The agent's handler, counting the conversations it is given."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.started = 0
        self._next = trio.Event()

    async def __call__(self, stream: trio.abc.Stream) -> None:
        self.started += 1
        self._next.set()
        self._next = trio.Event()
        await self.agent.serve(stream)

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(5):
            while self.started < count:
                await self._next.wait()


class FakePort:
    """A virtio-serial port's behaviour from a FIFO (host -> agent) and a pipe back.

    A FIFO whose writer has gone reads as zero bytes and polls as hung up,
    exactly like a port without a host; a new writer is a host reconnecting.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.fifo = tmp_path / "port"
        os.mkfifo(self.fifo)
        self.agent_in = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.host_in, self.agent_out = os.pipe()
        os.set_blocking(self.agent_out, False)
        self.host_out: int | None = None
        self.connect()
        self.disconnect()  # a host came and went: from now on the port reads as hung up

    def connect(self) -> None:
        self.host_out = os.open(self.fifo, os.O_WRONLY)

    def disconnect(self) -> None:
        assert self.host_out is not None
        os.close(self.host_out)
        self.host_out = None

    def send(self, data: bytes) -> None:
        assert self.host_out is not None
        os.write(self.host_out, data)

    async def reply(self) -> object:
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(self.host_in)
        return json.loads(os.read(self.host_in, 65536))

    def close(self) -> None:
        for fd in (self.agent_in, self.host_in, self.agent_out, self.host_out):
            if fd is not None:
                os.close(fd)


@pytest.fixture
def port(tmp_path: Path) -> Iterator[FakePort]:
    fake = FakePort(tmp_path)
    yield fake
    fake.close()


async def test_virtio_port_without_host_backs_off_without_spinning(
    agent: Agent, port: FakePort
) -> None:
    sessions = SessionCounter(agent)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_port, port.agent_in, port.agent_out, sessions)
        cpu = time.process_time()
        await trio.sleep(1)  # real time: no host, every read gives zero bytes
        used = time.process_time() - cpu
        assert used < 0.3, f"{used:.2f} s of CPU in 1 s without a host: busy loop"
        assert sessions.started == 1  # "no host yet" does not end the conversation
        port.connect()
        port.send(PING)
        assert await port.reply() == PONG
        nursery.cancel_scope.cancel()


async def test_virtio_host_that_reconnects_gets_a_clean_parser(
    agent: Agent, port: FakePort
) -> None:
    sessions = SessionCounter(agent)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_port, port.agent_in, port.agent_out, sessions)
        port.connect()
        port.send(PING)
        assert await port.reply() == PONG
        port.send(b'{"execute":"guest-sy')  # half a request, then the host goes away
        port.disconnect()
        await sessions.wait_for(2)
        port.connect()
        port.send(PING)  # no 0xFF needed: the half request is forgotten
        assert await port.reply() == PONG
        nursery.cancel_scope.cancel()


async def test_virtio_device_error_ends_the_transport(agent: Agent, port: FakePort) -> None:
    os.close(port.host_in)  # nobody reads the replies: writing fails with EPIPE
    port.host_in = os.open(os.devnull, os.O_RDONLY)
    port.connect()
    port.send(PING)
    with pytest.raises(BrokenPipeError):
        await serve_port(port.agent_in, port.agent_out, agent.serve)


@contextmanager
def pseudo_terminal() -> Iterator[tuple[int, str]]:
    """A pty pair: the host drives the master; the agent opens the slave by name.

    The slave stays open here too, so the line does not hang up when the
    agent closes it.
    """
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


@asynccontextmanager
async def serial_host(master: int) -> AsyncIterator[StreamClient]:
    os.set_blocking(master, False)
    yield StreamClient(trio.lowlevel.FdStream(os.dup(master)))


async def test_isa_serial_line_is_raw_and_at_qemu_ga_speed(agent: Agent) -> None:
    with pseudo_terminal() as (master, path):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_isa_serial, path, agent.serve))
            iflag, oflag, _cflag, lflag, ispeed, ospeed, _cc = termios.tcgetattr(master)
            assert (ispeed, ospeed) == (termios.B38400, termios.B38400)
            assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
            assert not oflag & termios.OPOST
            assert not iflag & (termios.ICRNL | termios.ISTRIP | termios.IXON)
            async with serial_host(master) as host:
                # No newline: a canonical line would hold the bytes back; an
                # echo would come before the reply; ISTRIP would eat the 0xFF.
                await host.send(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":7}}')
                assert await host.line() == b'\xff{"return": 7}'
                reply = await host.execute("guest-ping")
                assert reply == {"return": {}}
            nursery.cancel_scope.cancel()


async def test_isa_serial_baud_rate_is_configurable(agent: Agent) -> None:
    with pseudo_terminal() as (master, path):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_isa_serial, path, agent.serve, 115200))
            assert termios.tcgetattr(master)[4] == termios.B115200
            nursery.cancel_scope.cancel()


async def test_isa_serial_hang_up_is_a_transport_error(agent: Agent, tmp_path: Path) -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    config = AgentConfig(method="isa-serial", path=path, pidfile=None, statedir=str(tmp_path))
    hung_up = pytest.RaisesExc(TransportError, match=f"isa-serial {path}: the serial line hung up")
    with pytest.RaisesGroup(hung_up):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_transport, config.transport, agent.serve)
            os.close(master)  # the other end of the line is gone


async def test_retry_path_waits_for_the_device_and_reopens_it(
    agent_factory: AgentFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(transports_module, "RETRY_INTERVAL", 0.05)
    link = tmp_path / "ttyS9"
    agent = agent_factory(method="isa-serial", path=str(link), retry_path=True)
    with pseudo_terminal() as (master, path), caplog.at_level(logging.WARNING):
        async with agent, trio.open_nursery() as nursery:
            # Started although the device is missing: the agent is up, waiting for it.
            await nursery.start(serve_transport, agent.config.transport, agent.serve)
            assert "No such file or directory; trying again in 0.05 s" in caplog.text
            link.symlink_to(path)
            async with serial_host(master) as host:
                # Until the agent opens and configures the line, the terminal
                # echoes what the host sends: skip that until the reply comes.
                reply = b""
                with trio.fail_after(5):
                    while b'"return"' not in reply:
                        await host.send(b"\xff" + PING)
                        with trio.move_on_after(0.2):
                            reply = await host.line()
                # What the line echoed before the agent set it raw may lead the reply.
                assert reply.endswith(b'{"return": {}, "id": 1}')
            nursery.cancel_scope.cancel()


def test_check_transport_refuses_what_can_never_work() -> None:
    cases = {
        AgentConfig(method="carrier-pigeon"): "transport method 'carrier-pigeon' is not available",
        AgentConfig(method="unix-listen"): "method unix-listen needs a path",
        AgentConfig(method="vsock-listen", path="3"): "vsock address must be CID:PORT, got '3'",
        AgentConfig(method="vsock-listen", path="3:x"): "must be CID:PORT",
        AgentConfig(method="vsock-listen", path="3:4294967296"): "32-bit unsigned",
    }
    for config, message in cases.items():
        with pytest.raises(TransportError, match=message):
            check_transport(config.transport)


def test_vsock_addresses_are_read_as_qemu_reads_them() -> None:
    assert parse_address("3:1234") == (3, 1234)
    assert parse_address("-1:1234") == (socket.VMADDR_CID_ANY, 1234)
    assert parse_address("4294967295:0") == (socket.VMADDR_CID_ANY, 0)


def vsock_unavailable() -> str | None:
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as err:
        return f"this kernel has no AF_VSOCK sockets ({err.strerror})"
    return None


def test_vsock_listen_serves_a_client(agent_factory: AgentFactory) -> None:
    """Synchronous, so that a skip keeps its reason (pytest-trio loses it)."""
    if reason := vsock_unavailable():
        pytest.skip(reason)

    async def scenario() -> BaseException | None:
        agent = agent_factory(method="vsock-listen", path="-1:41999")
        async with agent, trio.open_nursery() as nursery:
            await nursery.start(agent.serve_transports)
            # The listening socket is there; a client needs a vsock path to it:
            # the loopback transport (CID 1) where the kernel has one.
            with trio.socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as client:
                try:
                    with trio.fail_after(5):
                        await client.connect((VMADDR_CID_LOCAL, 41999))
                except (OSError, trio.TooSlowError) as err:
                    nursery.cancel_scope.cancel()
                    return err
                await client.send(PING)
                assert json.loads(await client.recv(4096)) == PONG
            nursery.cancel_scope.cancel()
        return None

    if unreachable := trio.run(scenario):
        pytest.skip(
            "vsock-listen is bound and listening, but no client can reach it here: "
            f"connecting to CID 1 (vsock loopback) failed ({unreachable!r}); this host "
            "has no vsock_loopback and no /dev/vhost-vsock, so the VM gets no vsock either"
        )


async def test_vsock_listen_port_in_use_is_a_transport_error(agent: Agent) -> None:
    if reason := vsock_unavailable():
        pytest.skip(reason)
    config = AgentConfig(method="vsock-listen", path="-1:41998", pidfile=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_transport, config.transport, agent.serve)
        with pytest.raises(TransportError, match="vsock-listen -1:41998: Address already in use"):
            await serve_transport(config.transport, agent.serve)
        nursery.cancel_scope.cancel()


def test_cli_serves_a_serial_line_at_the_given_baud_rate(tmp_path: Path) -> None:
    with pseudo_terminal() as (master, path):
        agent = spawn_agent(
            tmp_path,
            *("-m", "isa-serial", "-p", path, "--baud-rate", "115200"),
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while termios.tcgetattr(master)[4] != termios.B115200:  # the agent set the line up
                assert agent.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.02)
            received = b""
            while b"\n" not in received:
                os.write(master, b'\xff{"execute":"guest-sync-delimited","arguments":{"id":5}}')
                if select.select([master], [], [], 1)[0]:
                    received += os.read(master, 4096)
            assert received.endswith(b'\xff{"return": 5}\n')
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(10) == 0
