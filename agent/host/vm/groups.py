"""Errors out of nurseries that only exist to run a helper beside the main work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def single_error() -> Iterator[None]:
    """The block's own error rather than a group of one (nested or not): the helper
    tasks beside it (a console reader, a signal watcher) do not fail on their own.
    A group of several errors stays a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if error is group:
            raise
    else:
        return
    raise error from error.__cause__  # not "during the group": the group is ours
