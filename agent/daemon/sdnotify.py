"""systemd's readiness protocol (``Type=notify``): datagrams to ``$NOTIFY_SOCKET``.

The same as ``sd_notify(3)``, without linking libsystemd: one datagram per
state change, ``READY=1`` once the transport is open, ``STOPPING=1`` on the
way out.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)


class Notifier:
    """Tells the service manager about state changes; does nothing without one."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """Take ``$NOTIFY_SOCKET`` out of the environment, so that processes the
        agent starts do not report to systemd in its name."""
        return cls(environ.pop("NOTIFY_SOCKET", None) or None)

    def notify(self, state: str) -> None:
        if self.address is None:
            return
        # A leading '@' names a socket in the abstract namespace.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode(), target)
        except OSError as err:
            log.warning("cannot notify the service manager at %s: %s", self.address, err)
