"""The 0xFF byte that resynchronises the stream (sans-IO).

In the input it discards any partial request (it is not UTF-8, so it can never
occur inside valid JSON); ``guest-sync-delimited`` puts one before its reply.
The framer decodes the input with ``surrogateescape``, which makes the byte
the character :data:`FLUSH_CHAR`.
"""

from __future__ import annotations

DELIMITER = b"\xff"
FLUSH_CHAR = "\udcff"  # DELIMITER, as surrogateescape decodes it
