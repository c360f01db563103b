"""Option value types for both commands, ``trio-qga`` and ``trio-qga-client``.

argparse names the option in its error (``argument --fs-timeout: ...``) but, for a type
function that raises ``ValueError``, says only ``invalid _seconds value: 'abc'``. A type
made by :func:`option_type` says what the option expects and what it got instead:
``argument --fs-timeout: expected seconds, a number > 0, got 'abc'``.
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def option_type(expected: str, parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type``: ``parse(text)``, or an error saying ``expected`` where
    ``parse`` raises ``ValueError``."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    convert.__name__ = expected  # what argparse's own messages would call it
    return convert


def positive_seconds(text: str) -> float:
    """A finite number of seconds above zero (``ValueError`` otherwise)."""
    value = float(text)
    if not 0 < value < math.inf:
        raise ValueError(text)
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def octal_mode(text: str) -> int:
    """File permissions in octal: 0660, 660 or 0o660."""
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise ValueError(text)
    return value


def command_line(text: str) -> tuple[str, ...]:
    """A command and its arguments, split as a shell would (not run by one)."""
    argv = tuple(shlex.split(text))  # ValueError: no closing quotation
    if not argv:
        raise ValueError(text)
    return argv


SECONDS = option_type("seconds, a number > 0", positive_seconds)
COUNT = option_type("a whole number > 0", positive_int)
MODE = option_type("permissions in octal, such as 0660", octal_mode)
COMMAND = option_type("a command with its arguments, as a shell splits them", command_line)
