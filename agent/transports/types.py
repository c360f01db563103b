"""What every transport hands its conversations to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

# Serves one conversation until the peer ends it, then closes the stream
# (``Agent.serve``).
StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]
