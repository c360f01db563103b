"""Give the buffers of big transfers back to the system (glibc's malloc).

glibc maps a block of 128 KiB or more with mmap() and unmaps it when freed,
but each such block freed raises that threshold to its size (up to 32 MiB)
and the heap's trim threshold to twice that. After one 16 MiB transfer the
next ones are served from the heap, and the heap keeps what they freed: the
agent stayed at 120 MiB after 1 and 16 MiB reads and writes, against 40 MiB
idle. Fixed thresholds turn that adaptation off: blocks of 2 MiB or more (the
buffers of a 16 or 48 MiB transfer, its base64 and its JSON) are mapped and
unmapped, and the heap gives back freed memory beyond 4 MiB at its top. The
buffers of 1 MiB transfers stay below the threshold and reuse the heap as
fast as before.

The heap's top is all the trim threshold can give back. Blocks below the
mmap threshold (a 1 MiB transfer's buffers) that were freed under a block
still in use stay resident: the agent was found at 60 to 77 MiB after 1 and
16 MiB reads and writes, 38 MiB idle, in two runs of six.
:func:`freed_memory_releaser` gives the session glibc's ``malloc_trim``,
which returns every free page of the heap, to call once a bulk transfer is
over.

The agent's command line sets this for its own process; an embedding program
keeps its allocator as it is.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

# malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 2 * 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 * 1024


def return_big_buffers() -> bool:
    """Set glibc's thresholds; False where the C library has no mallopt() or
    refuses it (musl's is a stub)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def freed_memory_releaser() -> Callable[[], None] | None:
    """A function giving the heap's free pages back to the system (glibc's
    ``malloc_trim(0)``), or None where the C library has none (musl)."""
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if malloc_trim is None:
        return None

    def release() -> None:
        malloc_trim(0)

    return release
