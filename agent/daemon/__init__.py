"""The ``trio-qga`` command: options and qemu-ga's configuration file, logging,
the pid file, daemonizing, systemd's notifications and memory settings
around one :class:`~agent.core.agent.Agent` serving its transport.
"""
