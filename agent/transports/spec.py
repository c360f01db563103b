"""A channel the agent serves: qemu-ga's transport method and path, and their defaults."""

from __future__ import annotations

from typing import NamedTuple

METHODS = ("virtio-serial", "isa-serial", "unix-listen", "vsock-listen")
DEFAULT_METHOD = "virtio-serial"  # qemu-ga's
DEFAULT_PATHS = {
    "virtio-serial": "/dev/virtio-ports/org.qemu.guest_agent.0",
    "isa-serial": "/dev/ttyS0",
}
DEFAULT_BAUD_RATE = 38400  # of an isa-serial line, qemu-ga's fixed speed
DEFAULT_SOCKET_MODE = 0o600  # of a unix-listen socket (qemu-ga leaves it to the umask)


def split_transport(text: str) -> tuple[str, str | None]:
    """``METHOD:PATH`` (``--transport``, the configuration file's ``transports``) as
    method and path; the path after the first colon (a vsock one is ``CID:PORT``),
    None when there is none (the method's default)."""
    method, _, path = text.partition(":")
    return method, path or None


class TransportSpec(NamedTuple):
    """One channel: how to open it, and what to do when it fails."""

    method: str = DEFAULT_METHOD
    path: str | None = None  # None: the method's default path
    retry: bool = False  # -r: reopen a channel that cannot open or fails, every 5 s
    baud_rate: int = DEFAULT_BAUD_RATE
    socket_mode: int = DEFAULT_SOCKET_MODE

    @property
    def resolved_path(self) -> str:
        if self.path is not None:
            return self.path
        try:
            return DEFAULT_PATHS[self.method]
        except KeyError:
            raise ValueError(f"method {self.method} needs a path") from None
