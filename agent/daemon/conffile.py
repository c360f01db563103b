"""qemu-ga's configuration file: a GLib key file, read from group ``[general]``.

    [general]
    method=virtio-serial
    verbose=true
    block-rpcs=guest-exec,guest-file-open
    transports=vsock-listen:-1:1234,unix-listen:/run/trio-qga.sock

The file is ``-c FILE``, else ``$QGA_CONF``, else ``/etc/qemu/qemu-ga.conf``
(which may be absent). Its settings come first; command-line flags win, and
lists add up, as in qemu-ga. :func:`dump` writes a configuration in the same
format (``-D``), keys in qemu-ga's order, then trio-qga's own (which qemu-ga
ignores in a file: one file serves both agents).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal, NamedTuple

from agent.argtypes import positive_seconds
from agent.core.config import DEFAULT_PIDFILE, AgentConfig
from agent.transports.spec import DEFAULT_METHOD, DEFAULT_PATHS, split_transport

DEFAULT_CONFIG_FILE = "/etc/qemu/qemu-ga.conf"
GROUP = "general"


class ConfigFileError(Exception):
    """The configuration file cannot be read, or a value in it is invalid."""


class Key(NamedTuple):
    """A key of the file and the :class:`AgentConfig` field it sets."""

    name: str
    field: str
    kind: Literal["string", "boolean", "list", "seconds"]


BLOCK_RPCS = Key("block-rpcs", "blocked_rpcs", "list")
KEYS = (
    Key("daemon", "daemonize", "boolean"),
    Key("method", "method", "string"),
    Key("path", "path", "string"),
    Key("logfile", "logfile", "string"),
    Key("pidfile", "pidfile", "string"),
    Key("fsfreeze-hook", "fsfreeze_hook", "string"),
    Key("statedir", "statedir", "string"),
    Key("verbose", "verbose", "boolean"),
    Key("retry-path", "retry_path", "boolean"),
    BLOCK_RPCS,
    Key("allow-rpcs", "allowed_rpcs", "list"),
    Key("fs-timeout", "fs_timeout", "seconds"),  # trio-qga's own
    Key("cache-dir", "cache_dir", "string"),  # trio-qga's own
    Key("transports", "transports", "list"),  # trio-qga's own: METHOD:PATH each
)
# qemu-ga's name for block-rpcs before QEMU 6.0, still read by 7.2 (with a warning)
# and in the files of guests set up then: its names add to block-rpcs'. Ignoring it
# would enable what such a file blocks. -D writes them as block-rpcs.
OLD_BLOCK_RPCS = Key("blacklist", "blocked_rpcs", "list")


def config_file(explicit: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str, bool]:
    """The file to read, and whether it must exist (only when named with ``-c``)."""
    if explicit is not None:
        return explicit, True
    return environ.get("QGA_CONF", DEFAULT_CONFIG_FILE), False


def load(path: str, required: bool) -> dict[str, Any]:
    """The settings of the file at ``path``, by :class:`AgentConfig` field name."""
    try:
        with open(path, encoding="utf-8") as file:
            # GLib ignores leading blanks; configparser would take an indented
            # line for the continuation of the previous value.
            text = "".join(line.lstrip(" \t") for line in file)
    except FileNotFoundError as err:
        if required:
            raise ConfigFileError(_failure(path, err.strerror)) from err
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(_failure(path, _reason(err))) from err
    return _settings(path, text)


def _settings(path: str, text: str) -> dict[str, Any]:
    # Here, not at the top: most agents start without a configuration file.
    import configparser

    # GLib's rules: '=' only, '#' comments, case-sensitive keys, the last of
    # duplicate keys wins, no interpolation and no default group.
    parser = configparser.ConfigParser(
        delimiters=("=",),
        comment_prefixes=("#",),
        strict=False,
        interpolation=None,
        default_section="\n",  # a name no group header can have
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        parser.read_string(text, path)
    except configparser.Error as err:
        raise ConfigFileError(_failure(path, _reason(err))) from err
    if not parser.has_section(GROUP):
        return {}
    section = parser[GROUP]
    try:
        settings = {
            key.field: _parse(key, section[key.name]) for key in KEYS if key.name in section
        }
        if OLD_BLOCK_RPCS.name in section:
            settings[BLOCK_RPCS.field] = _list(
                OLD_BLOCK_RPCS, section[OLD_BLOCK_RPCS.name]
            ) + _list(BLOCK_RPCS, section.get(BLOCK_RPCS.name, ""))
    except ValueError as err:
        raise ConfigFileError(_failure(path, str(err))) from err
    return settings


def dump(config: AgentConfig) -> str:
    """``config`` as a key file, as qemu-ga's ``-D`` writes it.

    qemu-ga's ``method`` and ``path`` show ``-m``/``-p``'s transport; when they
    name none, the first of ``transports`` (then not listed again), else
    qemu-ga's default: read back, the file names the same transports."""
    lines = [f"[{GROUP}]"]
    if config.method is None and config.path is None and config.transports:
        method, path = split_transport(config.transports[0])
        config = replace(config, method=method, path=path, transports=config.transports[1:])
    for key in KEYS:
        value = getattr(config, key.field)
        if key.name == "method" and value is None:
            value = DEFAULT_METHOD
        if key.name == "path" and value is None:
            value = DEFAULT_PATHS.get(config.method or DEFAULT_METHOD)
        if key.name == "pidfile" and value is None:
            value = DEFAULT_PIDFILE  # as qemu-ga shows it, in the foreground too
        if key.kind == "boolean":
            lines.append(f"{key.name}={'true' if value else 'false'}")
        elif key.kind == "list":
            lines.append(f"{key.name}={','.join(value or ())}")
        elif key.kind == "seconds":
            lines.append(f"{key.name}={value:g}")
        elif value is not None:
            lines.append(f"{key.name}={_escape(value)}")
    return "\n".join(lines) + "\n"


def _failure(path: str, reason: str | None) -> str:
    return f"error loading configuration from path: {path}, {reason}"


def _reason(err: Exception) -> str:
    if isinstance(err, OSError):
        return err.strerror or str(err)
    import configparser

    if isinstance(err, configparser.MissingSectionHeaderError):
        return "the file does not start with a group"
    if isinstance(err, configparser.ParsingError):
        line_number, line = err.errors[0]  # the line as repr() shows it
        return f"line {line_number} is not a key-value pair, group or comment: {line}"
    return str(err).splitlines()[0]


def _parse(key: Key, text: str) -> object:
    if key.kind == "boolean":
        # g_key_file_get_boolean takes exactly these.
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise ValueError(f"key '{key.name}' has a value that cannot be interpreted: '{text}'")
    if key.kind == "seconds":
        try:
            return positive_seconds(text)
        except ValueError:
            raise ValueError(
                f"key '{key.name}' is not a positive number of seconds: '{text}'"
            ) from None
    if key.kind == "list":
        return _list(key, text)
    return _unescape(key, text)


def _list(key: Key, text: str) -> tuple[str, ...]:
    # qemu-ga splits on ','; ';' (GLib's own list separator) is taken too.
    return tuple(name for name in re.split("[,;]", _unescape(key, text)) if name)


_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _unescape(key: Key, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        try:
            return _ESCAPES[match.group(1)]
        except KeyError:
            raise ValueError(
                f"key '{key.name}' contains an invalid escape sequence: '{match.group(0)}'"
            ) from None

    return re.sub(r"\\(.?)", replace, text, flags=re.DOTALL)


def _escape(text: str) -> str:
    """As GLib writes a string: blanks escaped only where they lead."""
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    leading = {" ": "\\s", "\t": "\\t"}.get(escaped[:1])
    return leading + escaped[1:] if leading else escaped
