"""The wire protocol, sans-IO: bytes in, requests out; replies in, bytes out.

``framer`` splits the input into requests by JSON structure (with ``scanner``
and, for deep nesting, ``deep_json``), honours 0xFF and caps size and depth;
``request`` checks a request's shape; ``encoder`` turns replies into bytes
(``payload`` marks the base64 it writes without copying); ``b64`` decodes the
base64 arguments; ``wirelog`` is ``-v``'s record of requests and replies. It
knows bytes and JSON, never commands, and imports no I/O library.
"""
