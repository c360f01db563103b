"""Base64 as the wire carries it (buf-b64, input-data, passwords): strict.

Malformed data is refused whole with qemu-ga's words, never half decoded
(qemu-ga decodes up to a missing padding and drops the rest).
"""

from __future__ import annotations

import binascii

import pybase64

from agent.errors import GenericError


def decode_base64(text: str) -> bytes:
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        try:  # the slower decoder only to say what is wrong
            binascii.a2b_base64(text, strict_mode=True)
            reason = str(err)
        except (binascii.Error, ValueError) as detail:
            reason = str(detail)
        if reason.startswith("Only base64 data") or not text.isascii():
            raise GenericError("Base64 data contains invalid characters") from err
        raise GenericError(f"Base64 data is malformed: {reason.lower()}") from err
