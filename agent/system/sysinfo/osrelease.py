"""os-release(5) files: shell-style ``KEY=value`` lines, as qemu-ga reads them.

qemu-ga loads the file as a GLib key file and unquotes each value itself;
QEMU's own test (tests/data/test-qga-os-release) pins the result for double
quotes and backslash escapes. Here a value is read the way a POSIX shell reads
an assignment: double-quoted parts with ``\\$ \\' \\" \\\\ \\``` escapes (qemu-ga
also unescapes ``\\'`` there, so we do too), single-quoted parts literally, and
unquoted parts up to the first blank or ``;``. Where qemu-ga differs:
single-quoted values keep their quotes and stop at a blank in qemu-ga, and one
malformed line makes it drop the whole file; here each line stands alone.
"""

from __future__ import annotations

OS_RELEASE_FIELDS = {
    "ID": "id",
    "NAME": "name",
    "PRETTY_NAME": "pretty-name",
    "VERSION": "version",
    "VERSION_ID": "version-id",
    "VARIANT": "variant",
    "VARIANT_ID": "variant-id",
}

_DOUBLE_QUOTE_ESCAPES = frozenset("$'\"\\`")


def unquote(value: str) -> str:
    """The value a shell would assign for ``KEY=value`` (no expansions)."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        if char in " \t;":
            break
        if char == '"':
            i += 1
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n and value[i + 1] in _DOUBLE_QUOTE_ESCAPES:
                    i += 1
                out.append(value[i])
                i += 1
            i += 1  # the closing quote
        elif char == "'":
            end = value.find("'", i + 1)
            end = n if end < 0 else end
            out.append(value[i + 1 : end])
            i = end + 1
        elif char == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def parse_os_release(text: str) -> dict[str, str]:
    """Every ``KEY=value`` of ``text``, unquoted; the last of a repeated key wins.
    Blank lines, comments and lines that are not assignments are skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        values[key.strip()] = unquote(value.strip())
    return values


def os_release_info(text: str) -> dict[str, str]:
    """The GuestOSInfo members that ``text`` gives, by their wire names."""
    values = parse_os_release(text)
    return {wire: values[key] for key, wire in OS_RELEASE_FIELDS.items() if key in values}
