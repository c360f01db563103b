"""systemd socket activation: a listening socket passed as fd 3 (``LISTEN_FDS``)."""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
METHODS = {socket.AF_UNIX: "unix-listen", socket.AF_VSOCK: "vsock-listen"}


class ActivationError(Exception):
    """systemd passed sockets the agent cannot serve."""


def activated_socket(environ: MutableMapping[str, str] = os.environ) -> socket.socket | None:
    """The socket systemd passed to this process, or None.

    The variables are removed either way, so that processes the agent starts
    do not take the socket for theirs.
    """
    pid = environ.pop("LISTEN_PID", None)
    count = environ.pop("LISTEN_FDS", None)
    environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None or pid != str(os.getpid()) or count == "0":
        return None
    if count != "1":
        raise ActivationError(f"trio-qga listens on one socket; systemd passed {count}")
    try:
        sock = socket.socket(fileno=LISTEN_FDS_START)
    except OSError as err:
        raise ActivationError(f"fd {LISTEN_FDS_START} from systemd: {err.strerror}") from err
    sock.set_inheritable(False)
    if sock.family not in METHODS or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise ActivationError("the socket systemd passed is not a unix or vsock stream socket")
    return sock


def method_of(sock: socket.socket) -> str:
    """The transport method an activated socket stands for."""
    return METHODS[socket.AddressFamily(sock.family)]
