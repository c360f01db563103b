"""The plugin record: finding the installed plugins without ``importlib.metadata``
while the Python environment is the one the last agent saw. Only
``agent.core.plugins.installed_plugins`` uses it: it is that function's
optimisation, not a second way to find plugins.

Discovery through ``importlib.metadata`` imports the email, zipfile and csv
modules (1.3 MiB, tens of milliseconds of every start on a host, 2.2 s in the
median of a TCG guest's, against 0.11 s for the record;
``docs/agent-lifecycle.md``), for plugins that are almost always the same.
After each discovery the agent records the group's entry points in
``plugins.json``, a file of its own in its cache directory (``--cache-dir``:
``/var/cache/trio-qga`` for the ``trio-qga`` command, none for an embedded
agent; it must outlive a reboot, which the state directory, a tmpfs, does
not), beside the environment's fingerprint; the next start uses the record if
the fingerprint still matches, and discovers again otherwise. The record knows
entry points only as rows of three strings (``name``, ``value``,
``distribution``).

The fingerprint is what installing, upgrading or removing a distribution
changes, and what editing its entry points changes:

- the interpreter (``sys.version``) and ``sys.path``, in order;
- in each ``sys.path`` directory, the names of its ``*.dist-info`` and
  ``*.egg-info`` entries (a distribution added or removed) and the mtime,
  size and inode of each one's ``entry_points.txt`` (edited, or replaced with
  its distribution);
- each ``sys.path`` entry that is a file (a zip): its mtime, size and inode.

Not a directory's own mtime: it moves with any file made in it, and
``python -m agent`` has its working directory (often ``/tmp``) on
``sys.path``.

A record that is missing, unreadable, malformed, of another fingerprint, or
not the agent's own regular file (``agent/system/ownfiles.py``: a link or a file a
user planted in a shared directory) is ignored, never trusted. A record that
cannot be written (a read-only filesystem, an agent that is not root) only
means discovery at every start. Agents of different environments that share
a cache directory replace each other's record. (A distribution that only a
custom ``sys.meta_path`` finder provides, none of Python's or pip's, is
recorded like the others, but a change to it is not seen until one of the
above changes.)
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.system.ownfiles import read_own_file
from agent.system.userfiles import replace_file

RECORD_NAME = "plugins.json"
RECORD_VERSION = 1
ROW_FIELDS = frozenset({"name", "value", "distribution"})
_DISTRIBUTION_SUFFIXES = (".dist-info", ".egg-info")

Row = dict[str, str]  # one entry point: its name, value (module:attr) and distribution

log = logging.getLogger(__name__)


def recorded(cache_dir: str, discover: Callable[[], list[Row]]) -> list[Row]:
    """The plugin entry points: from the record in ``cache_dir`` when it matches
    this environment, else from ``discover`` (and recorded for the next start)."""
    path = Path(cache_dir) / RECORD_NAME
    fingerprint = environment_fingerprint()
    entries = read_record(path, fingerprint)
    if entries is not None:
        return entries
    entries = discover()
    try:
        write_record(path, fingerprint, entries)
    except OSError as err:
        log.debug("plugin record %s not written: %s", path, err)
    return entries


def environment_fingerprint() -> list[Any]:
    """What installing, removing or editing a distribution on ``sys.path`` changes."""
    fingerprint: list[Any] = [sys.version, list(sys.path)]
    for entry in sys.path:
        fingerprint.append(_path_entry(entry or os.getcwd()))
    return fingerprint


def read_record(path: Path, fingerprint: list[Any]) -> list[Row] | None:
    """The entries recorded at ``path`` for ``fingerprint``; None if there is no
    such record (or only one that cannot be trusted)."""
    try:
        record = json.loads(read_own_file(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.debug("plugin record %s ignored: %s", path, err)
        return None
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        return None
    if record.get("fingerprint") != fingerprint:
        return None
    entries = record.get("entry_points")
    if not isinstance(entries, list) or not all(_is_entry(entry) for entry in entries):
        log.debug("plugin record %s ignored: malformed", path)
        return None
    return entries


def write_record(path: Path, fingerprint: list[Any], entries: list[Row]) -> None:
    """Record ``entries`` for ``fingerprint`` at ``path``, replacing it whole
    (its directory is made if missing, as systemd's CacheDirectory= would)."""
    record = {"version": RECORD_VERSION, "fingerprint": fingerprint, "entry_points": entries}
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    replace_file(path, json.dumps(record).encode(), durable=False)


def _path_entry(path: str) -> list[Any]:
    try:
        found = os.stat(path)
    except OSError:
        return [path, None]
    if stat.S_ISDIR(found.st_mode):
        return [path, "directory", _distributions(path)]
    return [path, found.st_mtime_ns, found.st_size, found.st_ino]


def _distributions(directory: str) -> list[Any]:
    """Each distribution directory (or egg-info file) in ``directory``, by name,
    with the signature of its entry_points.txt."""
    found = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.lower().endswith(_DISTRIBUTION_SUFFIXES):
                    continue
                found.append([entry.name, *_signature(entry.path, "entry_points.txt")])
    except OSError:
        return [None]
    return sorted(found)


def _signature(path: str, name: str) -> list[int | None]:
    try:
        found = os.stat(os.path.join(path, name))
    except OSError:
        return [None, None, None]
    return [found.st_mtime_ns, found.st_size, found.st_ino]


def _is_entry(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and entry.keys() == ROW_FIELDS
        and all(isinstance(value, str) for value in entry.values())
    )
