"""guest-fsfreeze-*: freezing guest filesystems around host snapshots and backups.

``state`` is the state machine; ``freezer`` drives it; ``mounts`` reads the
mount table; ``ioctl`` holds the kernel calls (the injectable seam);
``hook``, ``marker`` and ``watchdog``/``watchdog_client`` are the rest of
what a freeze involves. The command handlers are in ``agent.handlers.fsfreeze``.
"""
