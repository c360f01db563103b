"""What the agent's sessions are doing, for work that should wait until a host
is not waiting on it.

The agent imports the rest of its own commands after its first reply
(:meth:`agent.core.agent.Agent._complete_start`), and a group's import holds
the event loop: a few milliseconds on a real machine, 50 to 150 ms in a TCG
guest. Done as soon as the first reply was out, it sat in front of the next
requests: a test VM's ``run`` asks for its program right after the first
answer, and the program's first output reached the guest's harness 0.50 to
0.56 s after that answer; with the groups waiting for quiet, 0.27 to 0.30 s
(4 fresh boots each, alternating; docs/vm.md, "The first program after the
first answer"). So the groups load once the agent is quiet: no session has
a request under way, and none has read one for :data:`QUIET_FOR`. A host
that never pauses that long has each group loaded by its first request for
one of its commands instead.
"""

from __future__ import annotations

import trio

QUIET_FOR = 0.2  # seconds with no request read nor under way: the agent is quiet


class Activity:
    """The agent's sessions, counted: each request read, each under way, and
    whether a first reply has gone out. Updated once per read, not per request."""

    __slots__ = ("busy", "reads", "replied")

    def __init__(self) -> None:
        self.reads = 0  # reads that carried requests, ever
        self.busy = 0  # reads whose requests are being answered now
        self.replied = trio.Event()  # a session has sent its first reply

    def quiet_since(self, reads: int) -> bool:
        """Nothing under way, and no read since the count was ``reads``."""
        return self.busy == 0 and self.reads == reads

    async def wait_quiet(self, quiet_for: float = QUIET_FOR) -> None:
        """Return at the end of a period of ``quiet_for`` seconds in which the
        sessions read nothing, when nothing is under way either."""
        while True:
            reads = self.reads
            await trio.sleep(quiet_for)
            if self.quiet_since(reads):
                return
