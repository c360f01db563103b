"""trio-qga(8), the man page, written from the option definitions themselves.

The OPTIONS section is :func:`~agent.daemon.options.build_parser`'s options with
their help texts, as ``--help`` shows them; the FILES section names the
defaults the code uses. The page is kept in ``agent/data/trio-qga.8`` (the wheel
and the Debian package install it from there); ``tests/test_manpage.py`` fails
when it differs from what this module writes, so it cannot drift from the code.
Regenerate it with::

    python -m agent.daemon.manpage agent/data/trio-qga.8
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent.core.config import DEFAULT_CACHE_DIR, DEFAULT_PIDFILE, DEFAULT_STATEDIR
from agent.daemon.conffile import DEFAULT_CONFIG_FILE
from agent.daemon.options import build_parser
from agent.system.fsfreeze.hook import DEFAULT_HOOK
from agent.system.fsfreeze.marker import MARKER_NAME
from agent.transports.spec import DEFAULT_PATHS
from agent.version import VERSION

DESCRIPTION = (
    "trio-qga is a QEMU guest agent written in Python on Trio. It speaks the QEMU guest "
    "agent protocol (JSON over a byte stream) on a virtio-serial port, a serial line, a "
    "unix socket or vsock, several of them at once (--transport, repeated), so hosts such "
    "as libvirt, Proxmox and QEMU drive it as they drive qemu-ga(8). It takes qemu-ga's "
    "options and reads its configuration file; the options below that qemu-ga lacks are "
    "trio-qga's own.",
    "Settings are read from the configuration file first (group [general], keys named as "
    "the long options), then from the command line, whose flags win; lists add up. Under "
    "systemd the agent tells the service manager when its channels are open (Type=notify) "
    "and serves the sockets that systemd passes (socket activation), each as a transport. "
    "SIGTERM or SIGINT stop it cleanly: open file handles are closed and frozen "
    "filesystems thawed.",
)

FILES = (
    (DEFAULT_CONFIG_FILE, "The configuration file, in qemu-ga's format ($QGA_CONF, or -c)."),
    (
        DEFAULT_HOOK,
        "The fsfreeze hook run by -F: it runs each executable in "
        f"{DEFAULT_HOOK}.d/ with freeze or thaw, as qemu-ga's does.",
    ),
    (
        os.path.join(DEFAULT_STATEDIR, MARKER_NAME),
        "Present while filesystems are frozen (in the state directory, -t). The Debian "
        "package does not restart or stop the agent while it is there.",
    ),
    (DEFAULT_PIDFILE, "The pid file of a daemon (-d)."),
    (DEFAULT_CACHE_DIR, "The plugin record, kept across reboots."),
    (DEFAULT_PATHS["virtio-serial"], "The virtio-serial port, the default channel."),
    (
        "trio-qga.service, 60-trio-qga.rules",
        "The systemd unit that udev starts when the port appears, and its udev rule.",
    ),
    ("trio-qga-vsock.socket", "Socket activation on vsock port 1234, if enabled."),
    (
        "trio-qga-multi.service",
        "The port, vsock port 1234 and /run/trio-qga.sock from one agent, if enabled "
        "(with trio-qga.service masked).",
    ),
)


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The page, in man(7) markup."""
    parser = parser or build_parser()
    lines = [
        f'.TH TRIO-QGA 8 "" "trio-qga {VERSION}" "System Manager\'s Manual"',
        ".SH NAME",
        "trio-qga \\- QEMU guest agent on Trio, wire-compatible with qemu-ga",
        ".SH SYNOPSIS",
        ".B trio-qga",
        "[\\fIOPTION\\fR]...",
        ".SH DESCRIPTION",
    ]
    for number, paragraph in enumerate(DESCRIPTION):
        if number:
            lines.append(".PP")
        lines.append(_text(paragraph))
    lines.append(".SH OPTIONS")
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        lines += [".TP", _invocation(formatter, action), _text(formatter._expand_help(action))]
    lines.append(".SH FILES")
    for path, what in FILES:
        lines += [".TP", f".I {_text(path)}", _text(what)]
    lines += [
        ".SH SEE ALSO",
        ".BR qemu-ga (8),",
        ".BR systemd.service (5),",
        ".BR udev (7)",
    ]
    return "\n".join(lines) + "\n"


def _invocation(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    """``-c FILE, --config FILE`` with the options in bold and the values in italics."""
    value = ""
    if action.nargs != 0:
        value = " \\fI" + _text(formatter._format_args(action, action.dest.upper())) + "\\fR"
    return ", ".join(f"\\fB{_text(option)}\\fR{value}" for option in action.option_strings)


def _text(text: str) -> str:
    """``text`` as roff prints it literally: backslashes and dashes escaped, and no
    line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page to the file named, else to standard output."""
    args = list(sys.argv[1:] if argv is None else argv)
    page = render()
    if args:
        with open(args[0], "w", encoding="utf-8") as file:
            file.write(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
