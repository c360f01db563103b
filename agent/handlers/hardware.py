"""vCPUs and memory blocks on and off line, through sysfs under ``ctx.root``.

As qemu-ga: a CPU without an ``online`` file (cpu0, usually) is online and
cannot be offlined; a memory block's ``removable`` file says whether it can
be; a state that is already right is not written again. guest-set-vcpus
stops at the first failure and returns how many it processed (the error only
when that is none); guest-set-memory-blocks answers per block.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import trio

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError, os_error_text

handlers = HandlerSet()

CPU_DIR = "/sys/devices/system/cpu"
MEMORY_DIR = "/sys/devices/system/memory/"

# The writes that take a CPU or a memory block off line or back run in a plain
# trio worker thread, not the runner of ``agent.system.fsguard``: sysfs has no
# server to hang on, but the kernel's own work behind the write can take
# seconds (moving a CPU's tasks, a block's pages away). No deadline, as
# qemu-ga: an error after one would report a failure for a change still under
# way. A cancelled command (--command-timeout, SIGTERM) abandons the thread.


def _entries(directory: Path, prefix: str) -> list[int]:
    """The numbers N of the ``<prefix>N`` entries of ``directory``, in order."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    numbers = []
    for name in os.listdir(directory):
        if match := pattern.fullmatch(name):
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def _read_first(path: Path) -> bytes:
    with open(path, "rb") as sysfs:
        return sysfs.read(32)


# --- vCPUs ---------------------------------------------------------------------------


@handlers.command("guest-get-vcpus")
def guest_get_vcpus(ctx: AgentContext) -> list[dict[str, object]]:
    try:
        ids = _entries(ctx.root.path(CPU_DIR), "cpu")
    except OSError as err:
        raise GenericError(f"failed to list entries: {CPU_DIR}: {os_error_text(err)}") from err
    vcpus: list[dict[str, object]] = []
    for logical_id in ids:
        guest_dir = f"{CPU_DIR}/cpu{logical_id}/"
        online_file = ctx.root.path(guest_dir) / "online"
        try:
            status = _read_first(online_file)
        except FileNotFoundError:
            vcpus.append({"logical-id": logical_id, "online": True, "can-offline": False})
            continue
        except OSError as err:
            raise GenericError(f'open("{guest_dir}/online"): {os_error_text(err)}') from err
        if not status:
            raise GenericError(f'pread("{guest_dir}/online"): unexpected EOF')
        vcpus.append({"logical-id": logical_id, "online": status[:1] != b"0", "can-offline": True})
    return vcpus


def _set_vcpu(ctx: AgentContext, logical_id: int, online: bool) -> None:
    guest_dir = f"{CPU_DIR}/cpu{logical_id}/"
    directory = ctx.root.path(guest_dir)
    if not directory.is_dir():
        raise GenericError(f'open("{guest_dir}"): {os.strerror(errno.ENOENT)}')
    try:
        fd = os.open(directory / "online", os.O_RDWR)
    except FileNotFoundError:
        if not online:
            raise GenericError(f"logical processor #{logical_id} can't be offlined") from None
        return  # always online: nothing to do
    except OSError as err:
        raise GenericError(f'open("{guest_dir}/online"): {os_error_text(err)}') from err
    try:
        status = os.pread(fd, 1, 0)
        if not status:
            raise GenericError(f'pread("{guest_dir}/online"): unexpected EOF')
        if (status != b"0") != online:
            os.pwrite(fd, b"1" if online else b"0", 0)
    except OSError as err:
        raise GenericError(f'pwrite("{guest_dir}/online"): {os_error_text(err)}') from err
    finally:
        os.close(fd)


@handlers.command("guest-set-vcpus")
async def guest_set_vcpus(ctx: AgentContext, vcpus: list[Any]) -> int:
    processed = 0
    for vcpu in vcpus:
        try:
            await trio.to_thread.run_sync(
                _set_vcpu, ctx, vcpu.logical_id, vcpu.online, abandon_on_cancel=True
            )
        except GenericError:
            if processed == 0:
                raise
            break
        processed += 1
    return processed


# --- memory blocks -----------------------------------------------------------------


def _memory_dir(ctx: AgentContext) -> Path:
    return ctx.root.path(MEMORY_DIR)


@handlers.command("guest-get-memory-blocks")
def guest_get_memory_blocks(ctx: AgentContext) -> list[dict[str, object]]:
    try:
        indexes = _entries(_memory_dir(ctx), "memory")
    except FileNotFoundError:
        return []  # no memory blocks in sysfs: nothing to report, as qemu-ga
    except OSError as err:
        raise GenericError(f'Can\'t open directory"{MEMORY_DIR}": {os_error_text(err)}') from err
    blocks: list[dict[str, object]] = []
    for index in indexes:
        block_dir = _memory_dir(ctx) / f"memory{index}"
        try:
            state = _read_first(block_dir / "state")
        except FileNotFoundError:  # an old kernel: always online
            blocks.append({"phys-index": index, "online": True, "can-offline": False})
            continue
        except OSError as err:
            raise GenericError(f'open sysfs file "state": {os_error_text(err)}') from err
        try:
            removable = _read_first(block_dir / "removable")[:1] not in (b"0", b"")
        except FileNotFoundError:
            removable = False
        except OSError as err:
            raise GenericError(f'open sysfs file "removable": {os_error_text(err)}') from err
        blocks.append(
            {
                "phys-index": index,
                "online": state.startswith(b"online"),
                "can-offline": removable,
            }
        )
    if not blocks:
        raise GenericError("guest reported zero memory blocks!")
    return blocks


def _set_memory_block(ctx: AgentContext, index: int, online: bool) -> dict[str, object]:
    result: dict[str, object] = {"phys-index": index, "response": "success"}

    def failed(response: str, error: int) -> dict[str, object]:
        return {"phys-index": index, "response": response, "error-code": error}

    if not _memory_dir(ctx).is_dir():
        return failed("operation-not-supported", errno.ENOENT)
    state_file = _memory_dir(ctx) / f"memory{index}" / "state"
    if not state_file.parent.is_dir():
        return failed("not-found", errno.ENOENT)
    try:
        state = _read_first(state_file)
    except FileNotFoundError:
        if not online:
            return failed("operation-not-supported", errno.ENOENT)
        return result
    except OSError as err:
        return failed("operation-failed", err.errno or 0)
    if state.startswith(b"online") != online:
        try:
            with open(state_file, "wb") as sysfs:
                sysfs.write(b"online" if online else b"offline")
        except OSError as err:
            return failed("operation-failed", err.errno or 0)
    return result


@handlers.command("guest-set-memory-blocks")
async def guest_set_memory_blocks(
    ctx: AgentContext, mem_blks: list[Any]
) -> list[dict[str, object]]:
    results = []
    for block in mem_blks:
        results.append(
            await trio.to_thread.run_sync(
                _set_memory_block, ctx, block.phys_index, block.online, abandon_on_cancel=True
            )
        )
    return results


@handlers.command("guest-get-memory-block-info")
def guest_get_memory_block_info(ctx: AgentContext) -> dict[str, object]:
    if not _memory_dir(ctx).is_dir():
        raise GenericError(f'open("{MEMORY_DIR}"): {os.strerror(errno.ENOENT)}')
    try:
        text = _read_first(_memory_dir(ctx) / "block_size_bytes")
    except OSError as err:
        raise GenericError(f'open sysfs file "block_size_bytes": {os_error_text(err)}') from err
    if not text:
        raise GenericError('pread sysfs file "block_size_bytes": unexpected EOF')
    return {"size": int(text.strip(), 16)}
