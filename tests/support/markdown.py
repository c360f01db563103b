"""The project's Markdown documents as the docs tests read them: fenced code blocks
with the note before each, headings and their anchors, links, and tables.

A note is the HTML comment on the line right before a fence; it says what the
tests do with the block (see :data:`NOTES`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Every document of the project a reader may follow: the README, the docs, the
# security notes and the plugins' READMEs.
DOCUMENTS = sorted(
    [
        ROOT / "README.md",
        ROOT / "SECURITY.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "plugins").glob("*/README.md"),
    ]
)

# The languages a fence may name. Code (python, sh) is run unless its note says
# why not; the others are data, formats and output.
CODE = ("python", "sh")
LANGUAGES = (*CODE, "text", "json", "ini")

# What a note before a block may say.
NOT_RUN = "not run:"  # followed by the reason
WITH_AGENT = "run with an agent on /tmp/qga.sock"  # the path is replaced by a real socket
PYTEST_MODULE = "run as a pytest module"
EXCERPT = "excerpt of "  # followed by a path from the root: the block is in that file
OUTPUT = "output"  # a text block: the stdout of the run block before it
NOTES = (NOT_RUN, WITH_AGENT, PYTEST_MODULE, EXCERPT, OUTPUT)

_FENCE = re.compile(r"^(?P<indent> *)```(?P<language>\S*)\s*$")
_NOTE = re.compile(r"^\s*<!--\s*(?P<text>.*?)\s*-->\s*$")
_HEADING = re.compile(r"^(#{1,6}) +(?P<title>.+?)\s*#*\s*$")
_EXPLICIT_ANCHOR = re.compile(r'<a id="(?P<id>[^"]+)"></a>')
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its text without the fence's indentation."""

    document: Path
    line: int  # of the opening fence, from 1
    language: str
    text: str
    note: str | None  # the comment right before the fence, if any

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def reason_not_run(self) -> str | None:
        if self.note is None or not self.note.startswith(NOT_RUN):
            return None
        return self.note.removeprefix(NOT_RUN).strip()


@dataclass(frozen=True)
class Parsed:
    blocks: list[Block]
    prose: list[tuple[int, str]]  # the lines outside fences, with their numbers


def parse(document: Path) -> Parsed:
    """The fenced blocks of ``document`` and the lines around them."""
    lines = document.read_text("utf-8").splitlines()
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    number = 0
    while number < len(lines):
        fence = _FENCE.match(lines[number])
        if fence is None:
            prose.append((number + 1, lines[number]))
            number += 1
            continue
        indent = len(fence["indent"])
        start = number
        number += 1
        closing = re.compile(rf"^ {{{indent}}}```\s*$")
        body = []
        while number < len(lines) and not closing.match(lines[number]):
            body.append(lines[number].removeprefix(" " * indent))  # blank lines have none
            number += 1
        if number == len(lines):
            raise AssertionError(f"{document}:{start + 1}: a fence that is never closed")
        number += 1
        note = _note_before(lines, start)
        text = "\n".join(body) + "\n"
        blocks.append(Block(document, start + 1, fence["language"], text, note))
    return Parsed(blocks, prose)


@functools.cache
def documents() -> dict[Path, Parsed]:
    """Every document of :data:`DOCUMENTS`, parsed once."""
    return {document: parse(document) for document in DOCUMENTS}


def blocks() -> list[Block]:
    return [block for parsed in documents().values() for block in parsed.blocks]


def code_blocks() -> list[Block]:
    return [block for block in blocks() if block.language in CODE]


def blocks_to_run() -> list[Block]:
    """The code blocks run as programs: those without a note, and those with an agent."""
    return [block for block in code_blocks() if block.note in (None, WITH_AGENT)]


def blocks_noted(prefix: str) -> list[Block]:
    return [block for block in blocks() if (block.note or "").startswith(prefix)]


def next_block(block: Block) -> Block | None:
    """The block after ``block`` in its document, if any."""
    same = documents()[block.document].blocks
    index = same.index(block)
    return same[index + 1] if index + 1 < len(same) else None


def _note_before(lines: list[str], fence: int) -> str | None:
    if fence == 0:
        return None
    match = _NOTE.match(lines[fence - 1])
    return match["text"] if match else None


def anchors(parsed: Parsed) -> set[str]:
    """The anchors a link may name in a document: GitHub's for its headings, and
    explicit ``<a id>`` ones."""
    found: set[str] = set()
    for _, line in parsed.prose:
        found.update(match["id"] for match in _EXPLICIT_ANCHOR.finditer(line))
        heading = _HEADING.match(line)
        if heading:
            title = heading["title"].replace("`", "").lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def links(parsed: Parsed) -> list[tuple[int, str]]:
    """The targets of the document's Markdown links, outside code blocks."""
    return [(number, m["target"]) for number, line in parsed.prose for m in _LINK.finditer(line)]


def section(document: Path, heading: str) -> list[str]:
    """The prose lines under ``## heading``, up to the next heading of that level."""
    lines = [line for _, line in parse(document).prose]
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def table_first_cells(lines: list[str]) -> list[str]:
    """The first cell of each body row of the Markdown tables among ``lines``
    (a header is the row right above a ``| --- |`` row)."""
    cells = []
    for number, line in enumerate(lines):
        if not line.startswith("|") or _is_separator(line):
            continue
        if number + 1 < len(lines) and _is_separator(lines[number + 1]):
            continue  # a header
        cells.append(re.split(r"(?<!\\)\|", line)[1].strip())
    return cells


def _is_separator(line: str) -> bool:
    return line.startswith("|") and set(line.strip()) <= set("|-: ")
