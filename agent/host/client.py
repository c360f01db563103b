"""A host-side client for the QEMU guest agent protocol (ours or qemu-ga).

    async with await QgaClient.connect_unix("/tmp/qga.sock") as client:
        await client.ping()
        info = await client.info()            # a GuestAgentInfo model
        data = await client.read_file("/etc/hostname")

It reads replies with the agent's own framer, resynchronises as the protocol
intends (0xFF, then ``guest-sync-delimited`` with a random id, dropping stale
data up to the agent's 0xFF and that id's reply), applies a timeout to every
exchange, and raises :class:`AgentError` (carrying the error class) for error
replies. :meth:`QgaClient.call` returns the command's value as the pydantic
model generated from the schema (``agent.models.generated``, docs/models.md):
its members as attributes by Python name (``buf-b64`` -> ``buf_b64``), and
``model_dump(by_alias=True, exclude_unset=True)`` gives the agent's reply back.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import pybase64
import trio
from pydantic import ValidationError

from agent.host.errors import AgentError, AgentTimeout, ClientError, CommandNotFound
from agent.host.execution import Execution, start
from agent.models.generated import SchemaModels, builtin_models
from agent.models.schema import SchemaDefs
from agent.wire.framer import Flush, Framer, Message, ParseError

CHUNK = 4 * 1024 * 1024  # bytes per guest-file-read/-write when copying files
# A 48 MiB read comes back as 64 MiB of base64 plus framing: above the agent's cap.
MAX_REPLY = 128 * 1024 * 1024
# Nesting of a reply: no reply of the schema comes near it (guest-exec output
# is base64, guest-info a list of flat objects); a deeper one is refused.
MAX_REPLY_DEPTH = 1024

Progress = Callable[[int, int | None], None]  # (bytes done, total if known)


@dataclass(frozen=True)
class ExecResult:
    exitcode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def shell_status(self) -> int:
        """The status a shell would give: the exit code, or 128 + signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exitcode or 0


class Channel(Protocol):
    """How requests reach an agent: a stream of our own, or a host that owns the channel."""

    read_chunk: int  # bytes per guest-file-read when copying files
    write_chunk: int  # bytes per guest-file-write

    async def exchange(self, command: str, request: dict[str, Any], *, reply: bool) -> Any:
        """Send ``request``; the agent's reply (a JSON object), or None when ``reply`` is
        false (commands that send none). Raises :class:`ClientError`."""
        ...

    async def resync(self) -> None: ...

    async def aclose(self) -> None: ...


class StreamChannel:
    """The protocol over a byte stream: framing, 0xFF resync, a timeout per exchange."""

    read_chunk = write_chunk = CHUNK

    def __init__(self, stream: trio.abc.Stream, timeout: float) -> None:
        self.stream = stream
        self.timeout = timeout
        self._framer = Framer(max_size=MAX_REPLY, max_depth=MAX_REPLY_DEPTH)
        self._events: list[Message | ParseError | Flush] = []
        self._lock = trio.Lock()
        self._in_sync = False

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def resync(self) -> None:
        """Flush the agent's parser and drop stale replies (the protocol's handshake)."""
        async with self._lock:
            await self._resync()

    async def _resync(self) -> None:
        sync_id = random.randrange(1, 2**62)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
        expected = {"return": sync_id}
        with self._exchange("guest-sync-delimited"):
            await self.stream.send_all(b"\xff" + _json(request))
            delimited = False
            while True:
                event = await self._next_event()
                if isinstance(event, Flush):
                    delimited = True  # the agent's 0xFF: its reply comes next
                elif isinstance(event, Message) and delimited and event.value == expected:
                    break
        self._in_sync = True

    async def exchange(self, command: str, request: dict[str, Any], *, reply: bool) -> Any:
        async with self._lock:
            if not self._in_sync:
                await self._resync()
            self._in_sync = False  # until the reply is in: a timeout leaves us out of step
            with self._exchange(command):
                await self.stream.send_all(_json(request))
                answer = await self._next_message(command) if reply else None
            self._in_sync = True
        return answer

    @contextlib.contextmanager
    def _exchange(self, what: str) -> Iterator[None]:
        """One exchange under the timeout; transport errors become :class:`ClientError`."""
        try:
            with trio.fail_after(self.timeout):
                yield
        except trio.TooSlowError as err:
            raise AgentTimeout(f"{what}: no reply within {self.timeout} s") from err
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            raise ClientError(f"{what}: the connection to the agent is broken") from err

    async def _next_message(self, command: str) -> dict[str, Any]:
        while True:
            event = await self._next_event()
            if isinstance(event, Message):
                if not isinstance(event.value, dict):
                    raise ClientError(f"{command}: the agent sent {event.value!r}")
                return event.value
            if isinstance(event, ParseError):
                raise ClientError(f"{command}: garbled reply ({event.reason})")

    async def _next_event(self) -> Message | ParseError | Flush:
        while not self._events:
            data = await self.stream.receive_some(1 << 20)
            if not data:
                raise ClientError("the agent closed the connection")
            self._events = self._framer.receive(data)
        return self._events.pop(0)


class QgaClient:
    """One connection to a guest agent. Requests are sent one at a time."""

    def __init__(
        self,
        transport: trio.abc.Stream | Channel,
        *,
        request_timeout: float = 30.0,
        schema: SchemaDefs | None = None,
    ) -> None:
        """``transport``: a stream to the agent, or a :class:`Channel` (such as
        :class:`agent.host.libvirt_channel.LibvirtChannel`). ``request_timeout``: seconds any
        one exchange with the agent may take. ``schema``: the commands' definitions,
        the agent's own by default (its models are shared by every such client)."""
        if isinstance(transport, trio.abc.Stream):
            transport = StreamChannel(transport, request_timeout)
        self.channel: Channel = transport
        self.timeout = request_timeout
        self.models = builtin_models() if schema is None else SchemaModels(schema)
        self._commands = self.models.defs.commands

    @classmethod
    async def connect_unix(
        cls, path: str, *, request_timeout: float = 30.0, schema: SchemaDefs | None = None
    ) -> QgaClient:
        """Connect to a unix socket (a QEMU chardev or an agent listening) and resync."""
        try:
            with trio.fail_after(request_timeout):
                stream = await trio.open_unix_socket(path)
        except trio.TooSlowError as err:
            raise AgentTimeout(f"connecting to {path} timed out") from err
        except OSError as err:
            raise ClientError(f"cannot connect to {path}: {err.strerror or err}") from err
        client = cls(stream, request_timeout=request_timeout, schema=schema)
        await client.resync()
        return client

    @classmethod
    async def connect_libvirt(
        cls,
        uri: str,
        domain: str,
        *,
        request_timeout: float = 30.0,
        schema: SchemaDefs | None = None,
    ) -> QgaClient:
        """The agent of libvirt domain ``domain`` at ``uri``, through libvirt (which owns
        the channel). Needs libvirt-python (the ``libvirt`` extra)."""
        from agent.host.libvirt_channel import LibvirtChannel  # optional: libvirt-python

        channel = await LibvirtChannel.open(uri, domain, request_timeout)
        return cls(channel, request_timeout=request_timeout, schema=schema)

    async def __aenter__(self) -> QgaClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.channel.aclose()

    # ------------------------------------------------------------ protocol --
    async def resync(self) -> None:
        """Flush the agent's parser and drop stale replies (the protocol's handshake)."""
        await self.channel.resync()

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command``; its raw return value (JSON), or :class:`AgentError`."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        definition = self._commands.get(command)
        quiet = definition is not None and not definition.success_response
        reply = await self.channel.exchange(command, request, reply=not quiet)
        if reply is None:
            return None
        if "error" in reply:
            error = reply["error"]
            kind = CommandNotFound if error.get("class") == "CommandNotFound" else AgentError
            raise kind(command, str(error.get("class")), str(error.get("desc")))
        return reply.get("return")

    async def call(self, command: str, **arguments: Any) -> Any:
        """Run ``command`` (arguments by their wire names with ``-`` as ``_``) and
        return its result as the schema's model (:meth:`typed`)."""
        wire = {name.replace("_", "-"): value for name, value in arguments.items()}
        return self.typed(command, await self.execute(command, wire))

    def typed(self, command: str, value: object) -> Any:
        """``command``'s raw return ``value`` as its model: a struct's model, a list
        of them, an int... As it is when the schema has no such command, or for
        None (a command that sends no reply). Raises :class:`ClientError` when the
        value does not fit the schema."""
        if command not in self._commands or value is None:
            return value
        try:
            return self.models.validate_return(command, value)
        except ValidationError as err:
            raise ClientError(f"{command}: the reply does not match the schema: {err}") from err

    # ------------------------------------------------------------- commands --
    async def ping(self) -> None:
        await self.execute("guest-ping")

    async def sync(self) -> int:
        sync_id = random.randrange(1, 2**62)
        result: int = await self.execute("guest-sync", {"id": sync_id})
        if result != sync_id:
            raise ClientError(f"guest-sync answered {result}, not {sync_id}")
        return sync_id

    async def info(self) -> Any:
        """The agent's ``GuestAgentInfo`` model: version and supported_commands."""
        return await self.call("guest-info")

    async def commands(self) -> dict[str, bool]:
        """Each supported command and whether it is enabled."""
        info = await self.execute("guest-info")
        return {c["name"]: c["enabled"] for c in info["supported_commands"]}

    async def read_file(self, path: str, progress: Progress | None = None) -> bytes:
        """The whole of a guest file, byte for byte."""
        pieces: list[bytes] = []
        await self._copy_from(path, pieces.append, progress)
        return b"".join(pieces)

    async def get_file(self, path: str, local: str, progress: Progress | None = None) -> int:
        """Copy guest file ``path`` to the local file ``local``; returns the bytes copied."""
        with open(local, "wb") as out:  # noqa: ASYNC230 (small local writes)
            return await self._copy_from(path, out.write, progress)

    @contextlib.asynccontextmanager
    async def _opened(self, path: str, mode: str) -> AsyncIterator[int]:
        """A guest file handle, closed at the end. When the copy failed, that error is
        the one raised, not the close's (through libvirt, a timed-out request can make
        the next one time out too)."""
        handle: int = await self.execute("guest-file-open", {"path": path, "mode": mode})
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(ClientError):
                await self.execute("guest-file-close", {"handle": handle})
            raise
        await self.execute("guest-file-close", {"handle": handle})

    async def _copy_from(
        self, path: str, sink: Callable[[bytes], object], progress: Progress | None
    ) -> int:
        async with self._opened(path, "r") as handle:
            total = await self._size(handle) if progress else None
            done = 0
            while True:
                reply = await self.execute(
                    "guest-file-read", {"handle": handle, "count": self.channel.read_chunk}
                )
                data = pybase64.b64decode(reply["buf-b64"], validate=True)
                if len(data) != reply["count"]:
                    raise ClientError(f"guest-file-read: count {reply['count']}, got {len(data)}")
                sink(data)
                done += len(data)
                if progress:
                    progress(done, total)
                if reply["eof"] or not data:
                    return done

    async def _size(self, handle: int) -> int | None:
        """The file's size, for progress; None where it has none (a FIFO)."""
        try:
            end = await self.execute(
                "guest-file-seek", {"handle": handle, "offset": 0, "whence": "end"}
            )
            await self.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": "set"})
        except AgentError:
            return None
        size: int = end["position"]
        return size

    async def write_file(
        self, path: str, data: bytes, progress: Progress | None = None, mode: str = "w"
    ) -> int:
        """Write ``data`` to guest file ``path`` (created or truncated)."""
        async with self._opened(path, mode) as handle:
            done, chunk = 0, self.channel.write_chunk
            with memoryview(data) as view:
                while done < len(data):
                    piece = pybase64.b64encode(view[done : done + chunk]).decode("ascii")
                    reply = await self.execute(
                        "guest-file-write", {"handle": handle, "buf-b64": piece}
                    )
                    if reply["count"] == 0:
                        raise ClientError(f"guest-file-write: the guest took no data at {done}")
                    done += reply["count"]
                    if progress:
                        progress(done, len(data))
            await self.execute("guest-file-flush", {"handle": handle})
            return done

    async def put_file(self, local: str, path: str, progress: Progress | None = None) -> int:
        with open(local, "rb") as source:  # noqa: ASYNC230
            data = source.read()
        return await self.write_file(path, data, progress)

    async def fsfreeze_status(self) -> str:
        status: str = await self.execute("guest-fsfreeze-status")
        return status

    async def fsfreeze_freeze(self, mountpoints: list[str] | None = None) -> int:
        if mountpoints:
            count: int = await self.execute(
                "guest-fsfreeze-freeze-list", {"mountpoints": mountpoints}
            )
        else:
            count = await self.execute("guest-fsfreeze-freeze")
        return count

    async def fsfreeze_thaw(self) -> int:
        count: int = await self.execute("guest-fsfreeze-thaw")
        return count

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        cwd: str | None = None,
        stdin: bytes | None = None,
        terminal: tuple[int, int] | None = None,
    ) -> Execution:
        """Start a guest program whose output streams while it runs; iterate the
        :class:`~agent.host.execution.Execution` for it, await it for the status.
        Raises :class:`~agent.host.execution.ExecDisabled` when the agent's command
        filter disables exec."""
        return await start(self, argv, env=env, cwd=cwd, stdin=stdin, terminal=terminal)

    async def exec(
        self,
        path: str,
        args: list[str] | None = None,
        *,
        env: list[str] | None = None,
        stdin: bytes | None = None,
        poll: float = 0.05,
    ) -> ExecResult:
        """Run a guest program, wait for it, and return its output and status."""
        arguments: dict[str, Any] = {"path": path, "capture-output": True}
        if args:
            arguments["arg"] = args
        if env:
            arguments["env"] = env
        if stdin is not None:
            arguments["input-data"] = pybase64.b64encode(stdin).decode("ascii")
        pid = (await self.execute("guest-exec", arguments))["pid"]
        delay = poll
        while True:
            status = await self.execute("guest-exec-status", {"pid": pid})
            if status["exited"]:
                return ExecResult(
                    exitcode=status.get("exitcode"),
                    signal=status.get("signal"),
                    stdout=pybase64.b64decode(status.get("out-data", "")),
                    stderr=pybase64.b64decode(status.get("err-data", "")),
                    stdout_truncated=bool(status.get("out-truncated")),
                    stderr_truncated=bool(status.get("err-truncated")),
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _json(request: dict[str, Any]) -> bytes:
    return json.dumps(request).encode() + b"\n"
