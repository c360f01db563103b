"""systemd socket activation: listening sockets passed from fd 3 on (``LISTEN_FDS``).

Each socket systemd passes is served as a transport of its own (unix-listen
or vsock-listen, from its address family). ``LISTEN_FDNAMES`` (the sockets'
``FileDescriptorName=``) only names them in errors.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
METHODS = {socket.AF_UNIX: "unix-listen", socket.AF_VSOCK: "vsock-listen"}


class ActivationError(Exception):
    """systemd passed sockets the agent cannot serve."""


def activated_sockets(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The sockets systemd passed to this process, in order; none without.

    The variables are removed either way, so that processes the agent starts
    do not take the sockets for theirs.
    """
    pid = environ.pop("LISTEN_PID", None)
    count = environ.pop("LISTEN_FDS", None)
    names = environ.pop("LISTEN_FDNAMES", "").split(":")
    if pid is None or count is None or pid != str(os.getpid()):
        return []
    if not count.isdigit():
        raise ActivationError(f"LISTEN_FDS from systemd is not a number: '{count}'")
    sockets: list[socket.socket] = []
    try:
        for index in range(int(count)):
            sockets.append(_listening_socket(LISTEN_FDS_START + index, _name(names, index)))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _name(names: list[str], index: int) -> str:
    fd = LISTEN_FDS_START + index
    if index < len(names) and names[index] and names[index] != "unknown":
        return f"'{names[index]}' (fd {fd})"
    return f"fd {fd}"


def _listening_socket(fd: int, name: str) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise ActivationError(f"socket {name} from systemd: {err.strerror}") from err
    sock.set_inheritable(False)
    if sock.family not in METHODS or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise ActivationError(f"socket {name} from systemd is not a unix or vsock stream socket")
    return sock


def method_of(sock: socket.socket) -> str:
    """The transport method an activated socket stands for."""
    return METHODS[socket.AddressFamily(sock.family)]
