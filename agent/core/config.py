"""The agent's configuration: everything the command line and config file set.

Every default value of the agent lives here (the transports' in
``agent.transports.spec``); the modules that implement a setting take its
value as a parameter. So importing this module loads no implementation, nor
trio: the ``trio-qga`` command reads its options before it loads the agent.

Two sets of defaults: :class:`AgentConfig` itself is an embedding's, which
writes nothing outside the directories it names (no state directory, no
plugin record) and loads no plugin; :meth:`AgentConfig.command_defaults` is
the ``trio-qga`` command's: qemu-ga's ``/var/run``, the installed plugins and
their record in ``/var/cache/trio-qga``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.transports.spec import (
    DEFAULT_BAUD_RATE,
    DEFAULT_METHOD,
    DEFAULT_SOCKET_MODE,
    TransportSpec,
    split_transport,
)

# The trio-qga command's paths: qemu-ga's,
DEFAULT_PIDFILE = "/var/run/qemu-ga.pid"  # with -d (or daemon=true), when none is named
DEFAULT_STATEDIR = "/var/run"
# and trio-qga's own: what can be recomputed but should survive a reboot (the
# plugin record), where the state directory (a tmpfs, as /var/run) does not.
DEFAULT_CACHE_DIR = "/var/cache/trio-qga"
# Limits and deadlines.
DEFAULT_MAX_HANDLES = 1024  # guest-file handles open at once
DEFAULT_FS_TIMEOUT = 10.0  # seconds a filesystem call may block
DEFAULT_EXEC_IDLE_TIMEOUT = 600.0  # seconds a streaming-exec program may go unread
MAX_MESSAGE_SIZE = 64 * 1024 * 1024  # of a request, as qemu-ga
MAX_DEPTH = 1024  # nesting of a request, as qemu-ga
# The kernel's mount table: which mount a path is on (the filesystem calls'
# deadlines), and by default what guest-fsfreeze-freeze may freeze.
KERNEL_MOUNT_TABLE = "/proc/self/mountinfo"
# qemu-ga runs "/sbin/shutdown -h -P|-H|-r +0 'hypervisor initiated shutdown'".
SHUTDOWN = ("/sbin/shutdown", "-h")
SHUTDOWN_WHEN = ("+0", "hypervisor initiated shutdown")


@dataclass(frozen=True)
class AgentConfig:
    """Settings of one agent: an embedding's defaults, otherwise qemu-ga's.

    An embedding (a test suite, a test-VM harness) writes only where its
    configuration names: by default it has no state directory (``statedir``
    None: the handle counter is kept in memory, so handle ids start again at
    1000 with each agent; no frozen marker is written, so an agent that
    restarts while filesystems are frozen does not know it), no pid file, and
    no plugins (``plugins`` False: the installed plugins are not looked for).
    The ``trio-qga`` command starts from :meth:`command_defaults` instead.
    """

    # The transports: -m/-p (or the file's method/path) name one, as in qemu-ga;
    # ``transports`` (--transport, the file's transports) more, METHOD:PATH each.
    # When none is named, the agent serves qemu-ga's default (virtio-serial).
    method: str | None = None  # None: not named (virtio-serial if -p is)
    path: str | None = None  # None: the method's default path
    transports: tuple[str, ...] = ()
    logfile: str | None = None  # None: standard error
    # None: none named, DEFAULT_PIDFILE when daemonized; "": no pid file at all.
    pidfile: str | None = None
    statedir: str | None = None  # qga.state and the frozen marker; None: none, see above
    # The plugin record's (see agent.core.plugins); None or "": none, the plugins
    # are discovered at each start.
    cache_dir: str | None = None
    verbose: bool = False
    daemonize: bool = False  # -d: detach into the background
    retry_path: bool = False  # -r: reopen a channel that cannot open or fails, every 5 s
    fsfreeze_hook: str | None = None  # script run with freeze/thaw; None: no hook
    baud_rate: int = DEFAULT_BAUD_RATE
    socket_mode: int = DEFAULT_SOCKET_MODE  # of a unix-listen socket
    blocked_rpcs: tuple[str, ...] = ()
    allowed_rpcs: tuple[str, ...] | None = None  # None: all that are not blocked
    max_handles: int = DEFAULT_MAX_HANDLES  # open guest-file handles at once
    plugins: bool = False  # load the commands of the installed plugins
    disabled_plugins: tuple[str, ...] = ()  # plugin (entry point) names not to load
    command_timeout: float | None = None  # seconds an async handler may run; None: no limit
    max_message_size: int = MAX_MESSAGE_SIZE
    max_depth: int = MAX_DEPTH
    mount_table: str = KERNEL_MOUNT_TABLE  # what guest-fsfreeze-freeze may freeze
    thaw_timeout: float | None = None  # seconds frozen before an auto-thaw; None: never
    # Seconds a streaming-exec program may go unread before it is killed.
    exec_idle_timeout: float = DEFAULT_EXEC_IDLE_TIMEOUT
    fs_timeout: float = DEFAULT_FS_TIMEOUT  # seconds a filesystem call may block
    # Commands for the power and clock commands (qemu-ga's, right for a systemd guest).
    # By default, as qemu-ga 10.2, /sbin/poweroff, /sbin/halt or /sbin/reboot when
    # present (BusyBox guests have no shutdown), else these.
    poweroff_command: tuple[str, ...] = (*SHUTDOWN, "-P", *SHUTDOWN_WHEN)
    halt_command: tuple[str, ...] = (*SHUTDOWN, "-H", *SHUTDOWN_WHEN)
    reboot_command: tuple[str, ...] = (*SHUTDOWN, "-r", *SHUTDOWN_WHEN)
    # None: as qemu-ga, systemctl, else pm-utils, else /sys/power/state.
    suspend_disk_command: tuple[str, ...] | None = None
    suspend_ram_command: tuple[str, ...] | None = None
    suspend_hybrid_command: tuple[str, ...] | None = None
    hwclock_command: tuple[str, ...] = ("/sbin/hwclock",)  # run with -w (or -s)

    @classmethod
    def command_defaults(cls) -> AgentConfig:
        """What the ``trio-qga`` command starts from, before its configuration
        file and flags: qemu-ga's state directory, the installed plugins, and
        the cache directory that keeps their record across reboots."""
        return cls(statedir=DEFAULT_STATEDIR, plugins=True, cache_dir=DEFAULT_CACHE_DIR)

    @property
    def pidfile_path(self) -> str | None:
        """The pid file to write and lock, if any.

        As qemu-ga, an agent in the foreground writes none unless one is named
        (``-f`` or the configuration file); a daemon writes qemu-ga's by default.
        """
        if self.pidfile is None:
            return DEFAULT_PIDFILE if self.daemonize else None
        return self.pidfile or None

    @property
    def transport(self) -> TransportSpec:
        """The channel of ``-m`` and ``-p`` (qemu-ga's), virtio-serial unless named."""
        return self._spec(self.method or DEFAULT_METHOD, self.path)

    @property
    def named_transports(self) -> tuple[TransportSpec, ...]:
        """The channels the configuration names: ``-m``/``-p``'s if either is
        given, then ``transports``, in order (the same one twice included:
        ``agent.transports.serve.check_transports`` refuses that)."""
        named = (self.transport,) if self.method is not None or self.path is not None else ()
        return named + tuple(self._spec(*split_transport(text)) for text in self.transports)

    @property
    def transport_specs(self) -> tuple[TransportSpec, ...]:
        """The channels the agent serves: those named, else qemu-ga's default."""
        return self.named_transports or (self.transport,)

    def _spec(self, method: str, path: str | None) -> TransportSpec:
        """A channel with the options that apply to every one (``-r``, the line's
        speed, the socket's mode)."""
        return TransportSpec(method, path, self.retry_path, self.baud_rate, self.socket_mode)
