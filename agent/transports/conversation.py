"""One conversation of a transport: whatever goes wrong in it ends it, and only it."""

from __future__ import annotations

import logging

import trio

from agent.transports.types import StreamHandler

log = logging.getLogger(__name__)


async def serve_conversation(handler: StreamHandler, stream: trio.abc.Stream) -> bool:
    """Run ``handler`` on ``stream``, then close the stream; False if it failed.

    A peer that goes away ends its session quietly (the session's business);
    any other error ends this session only, logged with its reason, and the
    transport goes on to the next client. Only cancellation goes through.
    """
    try:
        await handler(stream)
    except Exception as err:
        log.exception("a session ended on an error: %s", _reason(err))
        return False
    finally:
        # As trio's serve_listeners: a plain close. The transports' streams
        # have nothing to say on closing, so it cannot wait (and skips the
        # cost of aclose_forcefully's cancelled scope, on every connection).
        await stream.aclose()
    return True


def _reason(err: BaseException) -> str:
    """What went wrong, from the errors themselves rather than the groups around them."""
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(map(_reason, err.exceptions))
    return f"{type(err).__name__}: {err}"
