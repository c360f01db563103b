"""Which guests a fleet command reaches: hosts (libvirt URIs with labels) and domains.

A host is ``--connect [LABEL=]URI`` or a line ``LABEL URI [DOMAIN-GLOB...]`` of an
inventory file. Its label names it in output and in ``--domain`` filters: a domain is
``LABEL:DOMAIN`` (a URI holds ``/``, ``?`` and ``=``, so it never is part of a name).
The label defaults to the URI's host name (``localhost`` for a URI without one, the
alias itself for a libvirt URI alias) and must be unique, as must the URIs: each is
opened once.

Which domains: ``--domain`` patterns (a name or a glob, ``LABEL:`` before it for one
host, where LABEL may be a glob too), matched against each host's running domains,
within the host's inventory globs where it has some; without ``--domain``, the
inventory globs alone. Everything here is pure: :func:`resolve` takes the running
domains that the hosts gave (or why they gave none).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.host.errors import ClientError

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
GLOB = set("*?[")
LOCAL = "localhost"  # the label of a URI that names no host (qemu:///system)


@dataclass(frozen=True)
class Host:
    """One hypervisor: its label, its URI, and its inventory's domain globs (if any)."""

    label: str
    uri: str
    globs: tuple[str, ...] = ()
    labelled: bool = False  # the label was given, not taken from the URI


def parse_connect(text: str) -> Host:
    """``--connect``'s value: ``LABEL=URI`` or ``URI``. ``ValueError`` if it has neither
    a usable label nor a URI."""
    label, sep, uri = text.partition("=")
    if sep and LABEL.fullmatch(label):  # a URI's scheme has a ':' before any '='
        if not uri:
            raise ValueError(f"{text!r}: no URI after the label")
        return Host(label, uri, labelled=True)
    return Host(default_label(text), text)


def default_label(uri: str) -> str:
    """The URI's host name; ``localhost`` for a local URI; a URI alias is its own label."""
    if "://" not in uri and LABEL.fullmatch(uri):
        return uri  # a libvirt URI alias (uri_aliases in libvirt.conf)
    try:
        host = urlsplit(uri).hostname
    except ValueError as err:
        raise ValueError(f"{uri!r} is not a URI: {err}") from err
    if not host:
        return LOCAL
    if not LABEL.fullmatch(host):
        raise ValueError(f"{uri!r}: its host {host!r} cannot be a label: give one (LABEL={uri})")
    return host


def read_inventory(path: str) -> list[Host]:
    """An inventory file's hosts: ``LABEL URI [DOMAIN-GLOB...]`` a line, ``#`` comments,
    words split as a shell does (quote a glob that holds a space)."""
    with open(path, encoding="utf-8") as lines:
        text = lines.read()
    hosts = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        if not words:
            continue
        if len(words) < 2 or not LABEL.fullmatch(words[0]):
            raise ValueError(f"{where}: expected LABEL URI [DOMAIN-GLOB...], got {line.strip()!r}")
        hosts.append(Host(words[0], words[1], tuple(words[2:]), labelled=True))
    return hosts


def check_hosts(hosts: Sequence[Host]) -> None:
    """Labels and URIs unique (``ValueError`` saying which)."""
    labels: dict[str, Host] = {}
    uris: dict[str, Host] = {}
    for host in hosts:
        other = labels.setdefault(host.label, host)
        if other is not host:
            raise ValueError(
                f"label {host.label!r} is given twice ({other.uri}, {host.uri}):"
                f" give each its own label (LABEL=URI)"
            )
        other = uris.setdefault(host.uri, host)
        if other is not host:
            raise ValueError(f"URI {host.uri!r} is given twice ({other.label}, {host.label})")


@dataclass(frozen=True)
class Selector:
    """One ``--domain``: a label glob (None: every host) and a domain name or glob."""

    text: str
    label: str | None
    domain: str

    @property
    def is_glob(self) -> bool:
        return bool(GLOB & set(self.domain))

    def applies(self, host: Host) -> bool:
        return self.label is None or fnmatch.fnmatchcase(host.label, self.label)


def parse_selector(text: str, hosts: Sequence[Host]) -> Selector:
    """``[LABEL:]DOMAIN``: the text before the first ``:`` is a label (or a glob of
    labels) when it names a host; with a single host, a domain name may hold a ``:``."""
    label, sep, domain = text.partition(":")
    if sep:
        if any(fnmatch.fnmatchcase(host.label, label) for host in hosts):
            return Selector(text, label, domain)
        if len(hosts) > 1:
            labels = ", ".join(host.label for host in hosts)
            raise ValueError(f"--domain {text!r}: no host labelled {label!r} (labels: {labels})")
    return Selector(text, None, text)


@dataclass(frozen=True)
class Target:
    """One domain of one host, and its name in output."""

    host: Host
    domain: str
    name: str


@dataclass(frozen=True)
class Unreached:
    """What could not be looked up on a host that gave no list of domains."""

    host: Host
    name: str  # LABEL:PATTERN


@dataclass
class Plan:
    """The targets and the unreached patterns, host by host in the hosts' order."""

    entries: list[Target | Unreached] = field(default_factory=list)

    @property
    def targets(self) -> list[Target]:
        return [entry for entry in self.entries if isinstance(entry, Target)]


def named(hosts: Sequence[Host]) -> bool:
    """Whether names carry their host's label: always, but for one host given by its
    URI alone (``--connect URI``), whose domains keep their bare names."""
    return len(hosts) > 1 or any(host.labelled for host in hosts)


def needed(hosts: Sequence[Host], selectors: Sequence[Selector]) -> list[Host]:
    """The hosts that some pattern may reach: only these are connected to."""
    if not selectors:
        return [host for host in hosts if host.globs]
    return [host for host in hosts if any(s.applies(host) for s in selectors)]


def resolve(
    hosts: Sequence[Host],
    selectors: Sequence[Selector],
    running: Mapping[str, Sequence[str] | None],
) -> Plan:
    """The targets, given each needed host's running domains (None: it was not reached).

    A glob is matched against a host's running domains (within its inventory globs). A
    plain name is taken as it is (a domain that is not running then fails on its own
    line) where it names its host: with a label, or when there is one host; else it is
    looked up among the running domains of each host. A pattern that finds nothing on
    any host it applies to is an error, unless one of them was not reached.
    """
    plan = Plan()
    found: dict[str, bool] = {}  # selector text -> found on some host
    unreached: set[str] = set()
    for host in needed(hosts, selectors):
        domains = running.get(host.label)
        mine = [s for s in selectors if s.applies(host)]
        patterns = [s.domain for s in mine] if selectors else list(host.globs)
        if domains is None:
            unreached.update(s.text for s in mine)
            for pattern in dict.fromkeys(patterns):
                plan.entries.append(Unreached(host, f"{host.label}:{pattern}"))
            continue
        members = _within(domains, host.globs)
        chosen: list[str] = []
        if selectors:
            for selector in mine:
                matched = _matches(selector, members, len(hosts) == 1)
                found[selector.text] = found.get(selector.text, False) or bool(matched)
                chosen += matched
        else:
            chosen = members
        for domain in dict.fromkeys(chosen):
            name = f"{host.label}:{domain}" if named(hosts) else domain
            plan.entries.append(Target(host, domain, name))
    missing = [key for key, hit in found.items() if not hit and key not in unreached]
    if selectors and missing:
        raise ClientError(f"no running domain matches {missing[0]!r}")
    if not plan.entries:
        raise ClientError("no running domain matches the inventory's globs")
    return plan


def _within(domains: Sequence[str], globs: Sequence[str]) -> list[str]:
    if not globs:
        return list(domains)
    return [name for name in domains if any(fnmatch.fnmatchcase(name, g) for g in globs)]


def _matches(selector: Selector, members: list[str], alone: bool) -> list[str]:
    if selector.is_glob:
        return fnmatch.filter(members, selector.domain)
    names_its_host = selector.label is not None and not GLOB & set(selector.label)
    if names_its_host or alone or selector.domain in members:
        return [selector.domain]
    return []
