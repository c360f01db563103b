"""Plugins: Python packages that add commands through the entry-point group
``trio_qga.commands``.

A plugin's entry point names a :class:`Plugin`: its schema, in the same QAPI
form as the agent's own (so its arguments and returns are validated by models
built from it), and its handlers. Its commands then behave like built-ins:
listed by guest-info, subject to --allow-rpcs/--block-rpcs, refused while
frozen unless the schema says ``'allowed-while-frozen': true``, run under the
same cancel scopes and error mapping.

Each plugin is loaded on its own: one that fails to import, is not a Plugin,
has a bad schema or handlers that do not fit it, is logged and skipped. A
plugin may not replace a built-in or another plugin's command: the clash is
refused with a message naming both, and that plugin is skipped whole.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.core.registry import HandlerSet, Registry, RegistryError
from agent.models.schema import SchemaError, parse

if TYPE_CHECKING:
    from importlib import metadata

ENTRY_POINT_GROUP = "trio_qga.commands"
UNKNOWN_DISTRIBUTION = "unknown distribution"
# An entry point's value, as importlib.metadata reads it: module[:attr[.attr...]] [extras].
_ENTRY_POINT_VALUE = re.compile(
    r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$"
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plugin:
    """What a plugin's entry point names: a QAPI schema and the handlers of its commands."""

    schema: str  # QAPI schema text (see Plugin.from_schema_file)
    handlers: HandlerSet
    description: str = ""

    @classmethod
    def from_schema_file(
        cls, path: str | Path, handlers: HandlerSet, description: str = ""
    ) -> Plugin:
        """A plugin whose schema is a file, usually next to the module that defines it."""
        return cls(Path(path).read_text("utf-8"), handlers, description)


@dataclass
class FoundPlugin:
    """One entry point of the group, and what became of it."""

    name: str
    distribution: str
    target: str  # module:attribute
    status: str = "not loaded"  # loaded, disabled, or why it was skipped
    commands: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"plugin {self.name} ({self.distribution})"


@dataclass(frozen=True)
class PluginEntry:
    """One entry point of the group: what ``importlib.metadata`` says of it, in
    a form that can also be recorded (``agent/plugin_record.py``)."""

    name: str
    value: str  # module:attribute
    distribution: str  # "name version" of the distribution that declares it

    @classmethod
    def of(cls, entry_point: metadata.EntryPoint) -> PluginEntry:
        dist = entry_point.dist
        label = f"{dist.name} {dist.version}" if dist else UNKNOWN_DISTRIBUTION
        return cls(entry_point.name, entry_point.value, label)

    def load(self) -> object:
        """The object the entry point names, as ``importlib.metadata.EntryPoint.load``
        finds it: the module imported, then each attribute in turn."""
        match = _ENTRY_POINT_VALUE.match(self.value)
        if match is None:
            raise ValueError(f"not an entry point value: {self.value!r}")
        module = importlib.import_module(match.group("module"))
        attributes = filter(None, (match.group("attr") or "").split("."))
        return functools.reduce(getattr, attributes, module)


EntryPoints = Callable[[], Iterable[PluginEntry]]


def installed_entry_points() -> list[PluginEntry]:
    """The group's entry points, from every distribution installed."""
    # Imported here: with --no-plugins or a valid plugin record, the agent never
    # pays for importlib.metadata (and the email, zipfile and csv modules it
    # brings: 1.3 MiB and 6 ms).
    from importlib import metadata

    return [PluginEntry.of(ep) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]


def load_plugins(
    registry: Registry,
    *,
    disabled: Iterable[str] = (),
    entry_points: EntryPoints = installed_entry_points,
) -> list[FoundPlugin]:
    """Add every installed plugin's commands to ``registry``; report on each."""
    skipped = set(disabled)
    found = []
    for entry_point in sorted(entry_points(), key=lambda ep: ep.name):
        plugin = FoundPlugin(entry_point.name, entry_point.distribution, entry_point.value)
        found.append(plugin)
        if plugin.name in skipped:
            plugin.status = "disabled"
            continue
        plugin.status = _load_one(registry, plugin, entry_point)
        if plugin.status == "loaded":
            log.info("%s: %s", plugin.source, ", ".join(plugin.commands))
        else:
            log.error("%s skipped: %s", plugin.source, plugin.status)
    return found


def _load_one(registry: Registry, found: FoundPlugin, entry_point: PluginEntry) -> str:
    try:
        plugin = entry_point.load()
    except Exception as err:  # any import-time failure of third-party code
        return f"failed to import {found.target}: {type(err).__name__}: {err}"
    if not isinstance(plugin, Plugin):
        return f"{found.target} is a {type(plugin).__name__}, not an agent.core.plugins.Plugin"
    try:
        schema = parse(plugin.schema, found.source)
        registry.add(plugin.handlers, found.source, schema)
    except (SchemaError, RegistryError) as err:
        return str(err)
    found.commands = list(plugin.handlers.specs)
    return "loaded"
