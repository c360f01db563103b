"""The ``trio-qga`` command: run the agent that ``agent/daemon/options.py`` configured.

``main`` turns argv into an :class:`AgentConfig` there, then takes what running
it needs: daemonizing, logging, the pid file, systemd's notifications, the
signals that stop it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import trio

from agent.core.config import AgentConfig
from agent.daemon import conffile
from agent.daemon.allocator import freed_memory_releaser, return_big_buffers
from agent.daemon.collector import freeze_start_up
from agent.daemon.logs import setup_logging
from agent.daemon.options import absolute_paths, build_parser, configure, wants_list
from agent.daemon.pidfile import PidfileError, held_pidfile
from agent.daemon.sdnotify import Notifier
from agent.system.fsfreeze.loghold import LogHold
from agent.transports.activation import ActivationError, activated_sockets
from agent.transports.serve import TransportError
from agent.version import VERSION

if TYPE_CHECKING:
    from agent.daemon.detach import Launcher

log = logging.getLogger("trio-qga")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"trio-qga {VERSION} (QEMU guest agent protocol)")
        return 0
    if args.list_plugins:
        return list_plugins(tuple(args.disable_plugin))
    if args.dump_schema:
        return dump_schema(not args.no_plugins, tuple(args.disable_plugin))
    if wants_list(args.block_rpcs) or wants_list(args.allow_rpcs):
        from agent.core.agent import build_registry
        from agent.core.plugins import installed_plugins, load_plugins

        registry = build_registry()
        if not args.no_plugins:  # their commands can be blocked too
            load_plugins(registry, installed_plugins(), disabled=tuple(args.disable_plugin))
        print("\n".join(command.name for command in registry))
        return 0
    try:
        listeners = activated_sockets()
        config = configure(args, listeners)
    except (conffile.ConfigFileError, ActivationError, TransportError) as err:
        print(f"trio-qga: {err}", file=sys.stderr)
        return 1
    if args.dump_conf:
        print(conffile.dump(config), end="")
        return 0
    launcher = None
    if config.daemonize:
        from agent.daemon import detach  # only a daemon that forks needs it

        config = absolute_paths(config)
        launcher = detach.detach(keep=[listener.fileno() for listener in listeners])
    try:
        log_hold = setup_logging(config, daemonized=launcher is not None)
    except OSError as err:
        return _failed(launcher, [f"cannot open log file {config.logfile}: {err.strerror}"])
    return _serve(config, listeners, launcher, log_hold)


def list_plugins(disabled: tuple[str, ...]) -> int:
    """Print each plugin found, from which distribution, whether it loads, its commands.

    Found afresh: the plugin record only serves the agent's start."""
    from agent.core.agent import build_registry
    from agent.core.plugins import installed_plugins, load_plugins

    logging.disable(logging.CRITICAL)  # the table says what the log would
    found = load_plugins(build_registry(), installed_plugins(), disabled=disabled)
    if not found:
        print("no plugins installed (entry-point group trio_qga.commands)")
    for plugin in found:
        print(f"{plugin.name}\t{plugin.distribution}\t{plugin.target}\t{plugin.status}")
        for command in plugin.commands:
            print(f"\t{command}")
    return 0


def dump_schema(plugins: bool, disabled: tuple[str, ...]) -> int:
    """Print one JSON object: each command's name (the plugins' too, unless
    ``plugins`` is false) to the JSON Schemas of its arguments (null: it takes
    none) and of its return, generated from its models (docs/models.md)."""
    from agent.core.agent import build_registry
    from agent.core.plugins import installed_plugins, load_plugins
    from agent.models.generated import SchemaModels

    registry = build_registry()
    if plugins:  # a plugin that fails to load is logged (standard error) and left out
        load_plugins(registry, installed_plugins(), disabled=disabled)
    models: dict[int, SchemaModels] = {}  # one set for each schema: the agent's, a plugin's
    schemas = {}
    for command in registry:
        found = models.setdefault(id(command.schema), SchemaModels(command.schema))
        schemas[command.name] = found.json_schemas(command.name)
    print(json.dumps(schemas, indent=2))
    return 0


def _serve(
    config: AgentConfig,
    listeners: list[socket.socket],
    launcher: Launcher | None,
    log_hold: LogHold,
) -> int:
    notifier = Notifier.from_environment()
    return_big_buffers()

    def ready() -> None:
        notifier.notify("READY=1")
        if launcher is not None:
            launcher.ready()

    try:
        with contextlib.ExitStack() as stack:
            for listener in listeners:
                stack.enter_context(listener)
            if config.pidfile_path:
                stack.enter_context(held_pidfile(config.pidfile_path))
            stuck = trio.run(
                partial(
                    run,
                    config,
                    listeners=listeners,
                    log_hold=log_hold,
                    on_ready=ready,
                    on_stopping=partial(notifier.notify, "STOPPING=1"),
                )
            )
    except PidfileError as err:
        return _failed(launcher, [str(err)])
    except Exception as err:  # a transport that cannot open, a bad schema, ...
        for cause in _leaves(err):
            log.debug("details", exc_info=cause)
        return _failed(launcher, [str(cause) for cause in _leaves(err)])
    if stuck:
        # Python would not wait for them (trio's worker threads are daemon
        # threads); skipping its shutdown makes sure nothing else does. The
        # kernel still holds the process until those calls return: a FUSE or
        # NFS request the server has taken cannot be interrupted.
        log.warning("stopped; %d filesystem call(s) still stuck in the kernel", stuck)
        logging.shutdown()
        os._exit(0)
    return 0


def _failed(launcher: Launcher | None, messages: list[str]) -> int:
    """Log why the agent stops; a launcher waiting for the daemon prints it too."""
    for message in messages:
        log.error("%s", message)
    if launcher is not None:
        launcher.failed("\n".join(messages))
    return 1


def _leaves(err: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, which nurseries raise."""
    if isinstance(err, BaseExceptionGroup):
        return [leaf for inner in err.exceptions for leaf in _leaves(inner)]
    return [err]


async def run(
    config: AgentConfig,
    *,
    listeners: Sequence[socket.socket] = (),
    log_hold: LogHold | None = None,
    on_ready: Callable[[], None] = lambda: None,
    on_stopping: Callable[[], None] = lambda: None,
) -> int:
    """Serve ``config``'s transports (and systemd's ``listeners``) until SIGTERM or
    SIGINT, or until the last of them has ended for good (its error is raised).

    ``log_hold`` is held while filesystems are frozen; ``on_ready`` runs once
    every transport that can open now is open, ``on_stopping`` on a signal.
    Returns how many filesystem calls were left stuck (abandoned threads).
    """
    from agent.core.agent import Agent  # after logging is set up: starting it logs

    agent = Agent(config, log_hold=log_hold, release_memory=freed_memory_releaser())
    async with agent, trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(partial(agent.serve_transports, listeners=listeners))
            freeze_start_up()
            log.info("trio-qga %s ready", VERSION)
            on_ready()
            async for signum in signals:
                log.info("%s received, stopping", signal.Signals(signum).name)
                on_stopping()
                nursery.cancel_scope.cancel()
                break
    return agent.context.fs.stuck
