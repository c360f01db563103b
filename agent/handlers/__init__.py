"""Command handlers, one module per group of commands.

``FIRST`` is the group a host's first request needs (sync, ping, info). The
agent imports the others (``GROUPS``) once its first reply has gone out, or
sooner when a request names one of their commands (``agent.core.agent``):
importing this package imports none of them.
"""

FIRST = "agent.handlers.core"
GROUPS = tuple(
    f"agent.handlers.{name}"
    for name in (
        "files",
        "fsfreeze",
        "system",
        "network",
        "disks",
        "exec",
        "stream_exec",
        "power",
        "accounts",
        "hardware",
    )
)
