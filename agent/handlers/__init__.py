"""Command handlers, one module per group of commands.

``FIRST`` is the group a host's first request needs (sync, ping, info). The
agent imports the others (``GROUPS``) once its first reply has gone out, one at
a time in this order, or sooner when a request names one of their commands
(``agent.core.agent``): importing this package imports none of them. The
streaming exec comes first: it is what a test VM's host asks for right after
its first reply (``trio-qga-vm run``), and a lookup loads the groups before
the one it needs.
"""

FIRST = "agent.handlers.core"
GROUPS = tuple(
    f"agent.handlers.{name}"
    for name in (
        "stream_exec",
        "files",
        "fsfreeze",
        "system",
        "network",
        "disks",
        "exec",
        "power",
        "accounts",
        "hardware",
    )
)
