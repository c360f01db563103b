"""Transports: each opens its channel and hands every conversation to the agent
as a ``trio.abc.Stream``; the session never knows which kind it got.

``spec`` names a channel (qemu-ga's method and path, with its defaults) and
imports nothing heavy; ``serve`` opens one and serves it; one module per kind
of channel does the opening.
"""
