"""What the launcher raises."""

from __future__ import annotations


class VmError(Exception):
    """The VM could not be prepared, booted or run."""


class BootFailed(VmError):
    """QEMU stopped, or the guest powered off, before its agent answered.
    The message ends with the console's last lines."""


class VmTimeout(VmError, TimeoutError):
    """The VM did not answer within its boot timeout, or ran longer than its
    timeout: it was stopped."""
