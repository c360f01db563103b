"""Values of a reply that the wire encoder writes its own way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Base64Payload:
    """Bytes that go out as a base64 JSON string: guest-file-read's ``buf-b64``,
    guest-exec-status's ``out-data`` and ``err-data``.

    The encoder (``agent.wire.encoder``) writes the base64 text byte for byte,
    never copied into a str: the JSON encoder would scan and copy every byte,
    and a str copy would double the memory a big read needs. Schema
    validation sees :attr:`STAND_IN` in its place.
    """

    data: bytes | bytearray
    # The base64 text in pieces, when it was encoded beforehand (``data`` is
    # then empty): a big payload, encoded between other sessions' requests.
    encoded: tuple[bytes, ...] | None = None

    STAND_IN: ClassVar[str] = ""
