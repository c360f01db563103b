"""The error classes of the wire, as exceptions handlers raise.

A handler raises one of these; the dispatcher turns it into
``{"error": {"class": ..., "desc": ...}}``. Anything else a handler raises is
a bug in the agent and is reported as a GenericError naming the command.
"""

from __future__ import annotations


class QgaError(Exception):
    """An error reply. ``error_class`` is QMP's class name."""

    error_class = "GenericError"

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


class GenericError(QgaError):
    """The class of nearly every error qemu-ga returns."""


class CommandNotFound(QgaError):
    """Unknown, blocked or (while frozen) disabled commands."""

    error_class = "CommandNotFound"


def os_error_text(err: OSError) -> str:
    """The OS's own words for an error, as qemu-ga's error_setg_errno() prints."""
    return err.strerror or str(err)
