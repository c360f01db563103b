"""What every transport hands its conversations to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

# Serves one conversation until the peer ends it. The stream stays open: the
# transport that opened it closes it (``serve_conversation``).
StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]
