"""Listening sockets (unix-listen, vsock-listen, systemd's): one client at a time."""

from __future__ import annotations

import errno
import logging
import socket

import trio

from agent.transports.after_reply import PollWhileAnswered
from agent.transports.conversation import serve_conversation
from agent.transports.socket_stream import SocketStream
from agent.transports.types import StreamHandler

log = logging.getLogger(__name__)

ACCEPT_RETRY = 0.1  # seconds, when the process is out of descriptors or memory
_RESOURCE_SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# accept(2) on Linux reports errors of the connection being accepted, not of the
# listener: ECONNABORTED, EPERM (a firewall said no), EPROTO, "network errors for
# the new socket as defined for the protocol" (its "Error handling": ENETDOWN,
# ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH) and, on
# various kernels, ENOSR, ESOCKTNOSUPPORT, EPROTONOSUPPORT, ETIMEDOUT; ECONNRESET
# for a client reset in the queue. A client that left so is skipped. trio's
# SocketListener skips the same ones, but its list is private, and its public
# accept() hands out trio's own stream where the agent needs its SocketStream
# over the accepted socket.
_CLIENT_GONE = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPERM,
        errno.EPROTO,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        errno.ENOSR,
        errno.ESOCKTNOSUPPORT,
        errno.EPROTONOSUPPORT,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
    }
)


async def serve_listener(
    sock: socket.socket,
    handler: StreamHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the clients of the listening ``sock`` one after another.

    A client that connects while another is served waits in the listen
    queue, as with qemu-ga. ``sock`` stays open: its owner closes it.
    """
    sock.setblocking(False)
    after_reply = PollWhileAnswered()  # the host's pace, learnt across its connections
    task_status.started()
    while True:
        try:
            connection, _ = sock.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as err:
            if err.errno in _CLIENT_GONE:
                log.debug("a client left before it was accepted: %s", err.strerror)
                continue
            if err.errno not in _RESOURCE_SHORTAGE:
                raise  # the listening socket itself failed
            log.warning("cannot accept a client: %s; retrying", err.strerror)
            await trio.sleep(ACCEPT_RETRY)
            continue
        log.debug("client connected")
        await serve_conversation(handler, SocketStream(connection, after_reply))
        log.debug("client disconnected")
