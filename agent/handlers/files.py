"""guest-file-*: open, read, write, seek, flush and close guest files.

Files are raw, unbuffered descriptors, so whatever a write reports as written
is already in the kernel: a client that disconnects, or an agent stopped by
SIGTERM, loses nothing. They are opened non-blocking, as qemu-ga sets them,
so a FIFO or a device cannot hang the agent. open, every call on a file of a
network or FUSE filesystem (whose server may never answer) or on a block
device, and every transfer over ``INLINE_IO_LIMIT`` bytes run in a worker
thread under ``--fs-timeout`` (``agent.system.fsguard``): a hung mount gets an error
naming the path, and a handle whose call hung fails at once until that call
comes back. Small transfers of local files, pipes and character devices run
inline, since a thread costs more than the transfer (a local disk that stops
answering can still stall those, as it stalls the kernel's own writeback).

Handles belong to the agent, not to a session: any session may use or close
any handle, a close waiting for the calls under way on it (``OpenFile.hold``).
Opens and writes pass the freezer's write gate, so that a freeze another
session starts never lands in the middle of one (``agent.system.fsfreeze.gate``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.core.store import OpenFile
from agent.errors import GenericError, os_error_text
from agent.system.fsfreeze.gate import WriteGate
from agent.system.fsguard import FsTimeout
from agent.wire.b64 import decode_base64
from agent.wire.payload import Base64Payload

handlers = HandlerSet()

READ_COUNT_DEFAULT = 4096
READ_COUNT_MAX = 48 * 1024 * 1024  # qemu-ga's limit
INLINE_IO_LIMIT = 64 * 1024
# qemu-ga creates files 0666 less the umask; never world-writable here.
NEW_FILE_MODE = 0o664

_ACCESS = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
}
# fopen()'s modes, each also with 'b' (meaningless on POSIX) after the letter or at the end.
OPEN_FLAGS = {
    spelling: flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    for mode, flags in _ACCESS.items()
    for spelling in {mode, mode[0] + "b" + mode[1:], mode + "b"}
}
WHENCE = {"set": os.SEEK_SET, "cur": os.SEEK_CUR, "end": os.SEEK_END}

_T = TypeVar("_T")


async def _io(
    ctx: AgentContext,
    opened: OpenFile,
    size: int,
    function: Callable[..., _T],
    *args: object,
    gate: WriteGate | None = None,
) -> _T:
    """``function(fd, *args)`` on an open file: inline when small and local,
    else under the deadline; through ``gate`` (the freezer's, for writes).

    A call that times out is abandoned and marks the handle hung until it
    comes back (the descriptor stays open under it until it does, even
    through a guest-file-close: see ``OpenFile.hold``).
    """
    if opened.hung:
        raise GenericError(
            f"handle {opened.handle} ('{opened.path}'): an earlier call on it did not"
            f" answer within {ctx.fs.timeout:g} s and has not come back; close the handle"
        )
    if not opened.may_block and size <= INLINE_IO_LIMIT:
        return _on_descriptor(opened, gate, function, *args)

    def came_back() -> None:
        opened.hung = False

    call = partial(_on_descriptor, opened, gate, function, *args)
    try:
        return await ctx.fs.call_on_path(opened.path, call, on_late_end=came_back)
    except FsTimeout as err:
        if not err.fast:  # this call is stuck
            opened.hung = True
        raise GenericError(f"file '{opened.path}' (handle {opened.handle}): {err}") from err


def _on_descriptor(
    opened: OpenFile, gate: WriteGate | None, function: Callable[..., _T], *args: object
) -> _T:
    """In whatever thread the call runs: the descriptor held for its length,
    and the write gate if any."""
    fd = opened.hold()
    try:
        if gate is None:
            return function(fd, *args)
        gate.enter()
        try:
            return function(fd, *args)
        finally:
            gate.leave()
    finally:
        opened.release()


@handlers.command("guest-file-open")
async def guest_file_open(ctx: AgentContext, path: str, mode: str | None) -> int:
    mode = "r" if mode is None else mode
    flags = OPEN_FLAGS.get(mode)
    if flags is None:
        raise GenericError(f"invalid file open mode '{mode}'")
    if "\0" in path:
        raise GenericError("invalid path: it contains a NUL character")
    ctx.store.check_room()
    try:
        # open() itself can block, on a network filesystem for one.
        fd, mode_bits, device = await ctx.fs.call_on_path(
            path, partial(_open, ctx.freezer.writes, path, flags), discard=_close_late
        )
    except (OSError, FsTimeout) as err:
        text = os_error_text(err) if isinstance(err, OSError) else str(err)
        raise GenericError(f"failed to open file '{path}' (mode: '{mode}'): {text}") from err
    if ctx.freezer.frozen:  # since the open: saving the handle counter could hang
        os.close(fd)
        raise GenericError(
            f"failed to open file '{path}' (mode: '{mode}'): the guest's filesystems"
            " are being frozen (guest-fsfreeze-freeze)"
        )
    opened = ctx.store.add(fd, path, mode)  # saves the handle counter, inline
    opened.may_block = stat.S_ISBLK(mode_bits) or (
        stat.S_ISREG(mode_bits) and ctx.fs.may_hang(device)
    )
    return opened.handle


def _open(gate: WriteGate, path: str, flags: int) -> tuple[int, int, int]:
    """The descriptor, its file's mode and the device of its filesystem; an
    open may create or truncate the file, so it passes the write gate."""
    gate.enter()
    try:
        fd = os.open(path, flags, NEW_FILE_MODE)
    finally:
        gate.leave()
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    except BaseException:
        os.close(fd)
        raise
    return fd, status.st_mode, status.st_dev


def _close_late(opened: tuple[int, int, int]) -> None:
    """An open that completed after its command had given up on it."""
    os.close(opened[0])


@handlers.command("guest-file-close")
async def guest_file_close(ctx: AgentContext, handle: int) -> dict[str, object]:
    opened = ctx.store.remove(handle)
    try:
        if opened.may_block:  # close() flushes: on NFS or FUSE it asks the server
            await ctx.fs.call_on_path(opened.path, opened.close, fail_fast=False)
        else:
            opened.close()
    except (OSError, FsTimeout) as err:
        text = os_error_text(err) if isinstance(err, OSError) else f"{err} (closed later)"
        raise GenericError(f"failed to close handle: {text}") from err
    return {}


@handlers.command("guest-file-read")
async def guest_file_read(ctx: AgentContext, handle: int, count: int | None) -> dict[str, object]:
    opened = ctx.store.get(handle)
    count = READ_COUNT_DEFAULT if count is None else count
    if not 0 <= count <= READ_COUNT_MAX:
        raise GenericError(f"value '{count}' is invalid for argument count")
    try:
        data, eof = await _io(ctx, opened, count, _read, count)
    except OSError as err:
        raise GenericError(f"failed to read file: {os_error_text(err)}") from err
    return {
        "count": len(data),
        "buf-b64": Base64Payload(data),
        "eof": eof,
    }


def _read(fd: int, count: int) -> tuple[bytes, bool]:
    """Up to ``count`` bytes; ``eof`` as qemu-ga's: true when the read hit the end.

    A descriptor with no data yet (an empty FIFO) gives what there is, without
    eof, where qemu-ga answers an EAGAIN error. Each piece is an ``os.read``,
    whose buffer the kernel fills: a ``bytearray(count)`` would first be zeroed
    holding the GIL (30 to 90 ms for 48 MiB on a loaded machine, every other
    session of the agent stopped). A regular file gives it all in one piece;
    only a descriptor that gives less at a time (a pipe) has its pieces joined.
    """
    pieces: list[bytes] = []
    got = 0
    eof = False
    while got < count:
        try:
            data = os.read(fd, count - got)
        except BlockingIOError:
            break
        if not data:
            eof = True
            break
        pieces.append(data)
        got += len(data)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces), eof


@handlers.command("guest-file-write")
async def guest_file_write(
    ctx: AgentContext, handle: int, buf_b64: str, count: int | None
) -> dict[str, object]:
    opened = ctx.store.get(handle)
    data = decode_base64(buf_b64)
    if count is None:
        count = len(data)
    elif not 0 <= count <= len(data):
        raise GenericError(f"value '{count}' is invalid for argument count")
    try:
        if opened.write_error is not None:
            error, opened.write_error = opened.write_error, None
            raise error
        written = await _io(
            ctx, opened, count, _write, opened, data, count, gate=ctx.freezer.writes
        )
    except OSError as err:
        raise GenericError(f"failed to write to file: {os_error_text(err)}") from err
    return {"count": written, "eof": False}


def _write(fd: int, opened: OpenFile, data: bytes, count: int) -> int:
    """Write ``count`` bytes, as write(2) reports progress.

    A descriptor that stops taking data (a full pipe) gives a short count, so
    the host can send the rest. So does an error after part of the data is
    written (a full disk, a quota, EIO): the count says what landed, and the
    error is kept for the next write on the handle. An error before any
    progress is raised at once.
    """
    view = memoryview(data)[:count]
    written = 0
    try:
        while written < count:
            try:
                written += os.write(fd, view[written:])
            except BlockingIOError:
                break
            except OSError as err:
                if not written:
                    raise
                opened.write_error = err
                break
    finally:
        view.release()
    return written


@handlers.command("guest-file-seek")
async def guest_file_seek(
    ctx: AgentContext, handle: int, offset: int, whence: int | str
) -> dict[str, object]:
    opened = ctx.store.get(handle)
    if isinstance(whence, str):
        code = WHENCE[whence]  # the schema allows only these names
    elif whence in WHENCE.values():
        code = whence
    else:
        raise GenericError(f"invalid whence code {whence}")
    try:
        # Inline for pipes and devices; SEEK_END asks a FUSE or NFS server for the size.
        position = await _io(ctx, opened, 0, os.lseek, offset, code)
    except OSError as err:
        raise GenericError(f"failed to seek file: {os_error_text(err)}") from err
    return {"eof": False, "position": position}  # qemu-ga's order


@handlers.command("guest-file-flush")
async def guest_file_flush(ctx: AgentContext, handle: int) -> dict[str, object]:
    """Written data is in the kernel already; flush also makes it durable on disk."""
    opened = ctx.store.get(handle)
    try:
        await _io(ctx, opened, INLINE_IO_LIMIT + 1, os.fsync)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EROFS):  # pipes, devices: nothing to sync
            raise GenericError(f"failed to flush file: {os_error_text(err)}") from err
    return {}
