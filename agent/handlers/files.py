"""guest-file-*: open, read, write, seek, flush and close guest files.

Files are raw, unbuffered descriptors, so whatever a write reports as written
is already in the kernel: a client that disconnects, or an agent stopped by
SIGTERM, loses nothing. They are opened non-blocking, as qemu-ga sets them,
so a FIFO or a device cannot hang the agent. Reads and writes of more than
``INLINE_IO_LIMIT`` bytes run in a worker thread, so a slow disk does not
stop the agent from answering signals, timers or the next client.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TypeVar

import pybase64
import trio

from agent.context import AgentContext
from agent.errors import GenericError, os_error_text
from agent.protocol import VerbatimString
from agent.registry import HandlerSet
from agent.store import OpenFile
from agent.wire_base64 import decode_base64

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


async def _io(size: int, function: Callable[..., _T], *args: object) -> _T:
    """Small transfers inline; big ones in a thread (never abandoned, so the
    descriptor cannot be closed under it)."""
    if size <= INLINE_IO_LIMIT:
        return function(*args)
    return await trio.to_thread.run_sync(function, *args)


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
        # A thread: open() itself can block, on a network filesystem for one.
        fd = await trio.to_thread.run_sync(_open, path, flags)
    except OSError as err:
        raise GenericError(
            f"failed to open file '{path}' (mode: '{mode}'): {os_error_text(err)}"
        ) from err
    return ctx.store.add(fd, path, mode).handle


def _open(path: str, flags: int) -> int:
    fd = os.open(path, flags, NEW_FILE_MODE)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    except BaseException:
        os.close(fd)
        raise
    return fd


@handlers.command("guest-file-close")
def guest_file_close(ctx: AgentContext, handle: int) -> dict[str, object]:
    opened = ctx.store.remove(handle)
    try:
        opened.close()
    except OSError as err:
        raise GenericError(f"failed to close handle: {os_error_text(err)}") from err
    return {}


@handlers.command("guest-file-read")
async def guest_file_read(ctx: AgentContext, handle: int, count: int | None) -> dict[str, object]:
    opened = ctx.store.get(handle)
    count = READ_COUNT_DEFAULT if count is None else count
    if not 0 <= count <= READ_COUNT_MAX:
        raise GenericError(f"value '{count}' is invalid for argument count")
    try:
        data, eof = await _io(count, _read, opened, count)
    except OSError as err:
        raise GenericError(f"failed to read file: {os_error_text(err)}") from err
    return {
        "count": len(data),
        "buf-b64": VerbatimString(pybase64.b64encode(data)),
        "eof": eof,
    }


def _read(opened: OpenFile, count: int) -> tuple[bytes | bytearray, bool]:
    """Up to ``count`` bytes; ``eof`` as qemu-ga's: true when the read hit the end.

    A descriptor with no data yet (an empty FIFO) gives what there is, without
    eof, where qemu-ga answers an EAGAIN error.
    """
    if count == 0:
        return b"", False
    buffer = bytearray(count)
    view = memoryview(buffer)
    got = 0
    eof = False
    try:
        while got < count:
            try:
                n = os.readv(opened.fd, [view[got:]])
            except BlockingIOError:
                break
            if n == 0:
                eof = True
                break
            got += n
    finally:
        view.release()
    if got < count:
        del buffer[got:]
    return buffer, eof


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
        written = await _io(count, _write, opened, data, count)
    except OSError as err:
        raise GenericError(f"failed to write to file: {os_error_text(err)}") from err
    return {"count": written, "eof": False}


def _write(opened: OpenFile, data: bytes, count: int) -> int:
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
                written += os.write(opened.fd, view[written:])
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
def guest_file_seek(
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
        position = os.lseek(opened.fd, offset, code)
    except OSError as err:
        raise GenericError(f"failed to seek file: {os_error_text(err)}") from err
    return {"eof": False, "position": position}  # qemu-ga's order


@handlers.command("guest-file-flush")
async def guest_file_flush(ctx: AgentContext, handle: int) -> dict[str, object]:
    """Written data is in the kernel already; flush also makes it durable on disk."""
    opened = ctx.store.get(handle)
    try:
        await trio.to_thread.run_sync(os.fsync, opened.fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EROFS):  # pipes, devices: nothing to sync
            raise GenericError(f"failed to flush file: {os_error_text(err)}") from err
    return {}
