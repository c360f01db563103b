"""What a stream does after a reply before it sleeps in the kernel: the post-reply
poll policy, :class:`PollWhileAnswered`.

A host that sends its next request at once (a sync, then its command; a file read
chunk after chunk) finds the agent still awake if it goes on looking for a short
while: falling asleep in epoll and being woken costs more than a few passes
through the scheduler. A host slower than that gets nothing from the looking, and
on a busy machine the CPU it burns is taken from whoever else runs, the host
included. So the policy polls for up to :data:`WINDOW` after a reply while the
host's next message keeps coming inside it; after a poll that found nothing, the
next replies look once only (one pass, then one read) before the window is tried
again: one reply after a first miss, twice as many after each miss in a row, up to
:data:`BACKOFF_MAX`; a poll that finds the message starts over. A fast host that
misses the window now and then loses little; a slow one is polled for rarely. A
listener's connections share one policy (one host, one pace: a connect-and-close
host does not pay for a fruitless poll per connection).

Why (``benchmarks/ab.py``, 5 alternating rounds, 2 cores; docs/benchmarks.md has the
tables): against one look after each reply, polling with a flat back-off of 16 gave,
on a quiet machine, 4 KiB reads 1.40x and writes 1.37x as many MiB/s, connect cycles
1.11x, the agent's CPU per MiB 0.88-0.90x; but each occasional miss cost a fast host
16 quick replies (against ``d154a99``, which polled after every reply: 4 KiB reads
0.89x, writes 0.90x). Doubling the back-off from 1: 0.98x and 0.95x against
``d154a99``; with three busy loops on the 2 cores, against one look, every row within
0.88-1.17x (the CPU per connect cycle 1.17x). Polling after every reply, as
``d154a99`` did, took the CPU a loaded host needed: one look instead gave pipelined
pings 1.27x and connect cycles 1.14x at load 5 (``ab.py --base eeadd15``).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

WINDOW = 50e-6  # seconds of looking for the next message after a reply
BACKOFF_MAX = 16  # most replies that only look once, after fruitless polls in a row


class PollWhileAnswered:
    """The post-reply poll of one stream (see the module)."""

    __slots__ = ("_backoff", "_look_only")

    def __init__(self) -> None:
        self._look_only = 0  # replies left that only look once
        self._backoff = 0  # how many looked once after the last fruitless poll

    async def next_message(self, try_read: Callable[[], bytes | None]) -> bytes | None:
        """The peer's next message if it comes in time, else None (the stream then
        waits in the kernel). ``try_read`` returns None when nothing is waiting and
        never blocks. The passes are cancel-shielded: the caller checked for
        cancellation before the reply, and checks again in the wait after."""
        await trio.lowlevel.cancel_shielded_checkpoint()
        data = try_read()
        if data is not None:
            return data
        if self._look_only:
            self._look_only -= 1
            return None
        give_up = trio.current_time() + WINDOW
        while True:  # one pass at least, however late this task runs
            await trio.lowlevel.cancel_shielded_checkpoint()
            data = try_read()
            if data is not None:
                self._backoff = 0
                return data
            if trio.current_time() >= give_up:
                break
        self._backoff = min(2 * self._backoff or 1, BACKOFF_MAX)
        self._look_only = self._backoff
        return None
