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

:func:`installed_plugins` is the one way the agent finds them;
:func:`load_plugins` adds what it found to a registry.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.core import plugin_record
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
    a form that can also be recorded (``agent.core.plugin_record``)."""

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


def installed_plugins(cache_dir: str | None = None) -> list[PluginEntry]:
    """The group's entry points, from every distribution installed: the one
    way the agent finds its plugins.

    They come from ``importlib.metadata``. Given a ``cache_dir`` (the
    ``trio-qga`` command's ``--cache-dir``), its answer is recorded there, and
    read back instead while the Python environment stays the same (see
    ``agent.core.plugin_record``). That spares the first answer of a guest
    the import of importlib.metadata and the email, zipfile and csv modules it
    brings: in a TCG guest, discovery takes 2.2 s (median; 0.55 to 4.6 s)
    where the record takes 0.11 s (0.04 to 0.8 s); on a host, tens of
    milliseconds against one (``docs/agent-lifecycle.md``).
    """
    if not cache_dir:
        return _discover()
    rows = plugin_record.recorded(
        cache_dir, lambda: [dataclasses.asdict(entry) for entry in _discover()]
    )
    return [PluginEntry(**row) for row in rows]


def _discover() -> list[PluginEntry]:
    # Imported here: without plugins, or with a plugin record that matches,
    # the agent never pays for importlib.metadata.
    from importlib import metadata

    return [PluginEntry.of(ep) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]


def load_plugins(
    registry: Registry, entries: Iterable[PluginEntry], *, disabled: Iterable[str] = ()
) -> list[FoundPlugin]:
    """Add the commands of the plugins ``entries`` name (:func:`installed_plugins`)
    to ``registry``, except the ``disabled`` ones; report on each."""
    skipped = set(disabled)
    found = []
    for entry_point in sorted(entries, key=lambda ep: ep.name):
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
