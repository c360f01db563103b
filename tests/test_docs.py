"""The README and ``docs/`` cannot drift from the code: what can be checked
without running anything.

Every fence names a language, every Python and shell block either runs
(``tests/test_docs_examples.py`` runs them) or says in the HTML comment before it
why it cannot run here, and an excerpt of the code is still in its file
(``tests/support/markdown.py`` reads the documents). The README's options table
lists every option of ``trio-qga``, and every path and link of the documents
exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.daemon.options import build_parser
from tests.support import markdown
from tests.support.markdown import ROOT, Block

README = ROOT / "README.md"
BLOCKS = markdown.blocks()
CODE = markdown.code_blocks()
EXCERPTS = markdown.blocks_noted(markdown.EXCERPT)


def where(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def test_the_documents_hold_what_the_checks_look_for() -> None:
    """A parser that saw nothing would pass every check."""
    assert {README, ROOT / "docs" / "embedding.md"} <= set(markdown.documents())
    assert len(markdown.blocks_to_run()) >= 4
    assert markdown.blocks_noted(markdown.PYTEST_MODULE)
    assert EXCERPTS


# ------------------------------------------------------------------ blocks --
@pytest.mark.parametrize("block", BLOCKS, ids=where(BLOCKS))
def test_every_block_names_a_known_language(block: Block) -> None:
    assert block.language in markdown.LANGUAGES, (
        f"{block.where}: a fence needs one of {markdown.LANGUAGES}, not {block.language!r}"
    )


@pytest.mark.parametrize("block", BLOCKS, ids=where(BLOCKS))
def test_every_note_is_one_the_tests_know(block: Block) -> None:
    if block.note is not None:
        assert block.note.startswith(markdown.NOTES), f"{block.where}: {block.note!r}"
        if block.note.startswith(markdown.NOT_RUN):
            assert block.reason_not_run, f"{block.where}: 'not run' needs a reason"


@pytest.mark.parametrize("block", CODE, ids=where(CODE))
def test_every_code_block_runs_or_says_why(block: Block) -> None:
    if block.language == "sh":
        assert block.note is not None, (
            f"{block.where}: a shell block runs with an agent ('<!-- {markdown.WITH_AGENT} -->')"
            f" or says why it cannot ('<!-- {markdown.NOT_RUN} REASON -->')"
        )
    assert block.note != markdown.OUTPUT, f"{block.where}: an output block is text"


def test_an_output_block_follows_a_block_that_runs() -> None:
    for block in BLOCKS:
        following = markdown.next_block(block)
        if following is not None and following.note == markdown.OUTPUT:
            assert following.language == "text", following.where
            assert block in markdown.blocks_to_run(), f"{following.where}: follows no run block"
    assert any(block.note == markdown.OUTPUT for block in BLOCKS)


@pytest.mark.parametrize("block", EXCERPTS, ids=where(EXCERPTS))
def test_an_excerpt_is_still_in_its_file(block: Block) -> None:
    assert block.note is not None
    source = ROOT / block.note.removeprefix(markdown.EXCERPT).strip()
    assert block.text in source.read_text("utf-8"), (
        f"{block.where}: this excerpt is no longer in {source.relative_to(ROOT)}"
    )


# ----------------------------------------------------------------- options --
def test_the_options_table_lists_every_option() -> None:
    cells = markdown.table_first_cells(markdown.section(README, "Options"))
    listed = {option for cell in cells for option in re.findall(r"(?<![\w-])(--?\w[\w-]*)", cell)}
    parser = {option for action in build_parser()._actions for option in action.option_strings}
    parser -= {"-h", "--help"}
    assert sorted(parser - listed) == [], "options of trio-qga missing from the README's table"
    assert sorted(listed - parser) == [], "options in the README's table that trio-qga lacks"


# ----------------------------------------------------------- paths, links --
# A path from the root in a document: agent/..., tests/..., and so on; not a glob.
PATH = re.compile(
    r"(?<![\w/.-])((?:agent|tests|benchmarks|scripts|plugins|docs|systemd|\.ci)/[\w./-]*\w)"
    r"(?![\w*{])"
)


def named(document: Path) -> str:
    return str(document.relative_to(ROOT))


@pytest.mark.parametrize("document", markdown.DOCUMENTS, ids=named)
def test_every_path_a_document_names_exists(document: Path) -> None:
    parsed = markdown.documents()[document]
    lines = parsed.prose + [
        (block.line, line) for block in parsed.blocks for line in block.text.splitlines()
    ]
    missing = [
        f"{number}: {path}"
        for number, line in lines
        for path in PATH.findall(line)
        if not (ROOT / path).exists()
    ]
    assert missing == [], named(document)


@pytest.mark.parametrize("document", markdown.DOCUMENTS, ids=named)
def test_every_link_of_a_document_leads_somewhere(document: Path) -> None:
    broken = []
    for number, target in markdown.links(markdown.documents()[document]):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{number}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            broken.append(f"{number}: {target} (no such heading)")
    assert broken == [], named(document)


def anchors_of(document: Path) -> set[str]:
    parsed = markdown.documents().get(document) or markdown.parse(document)
    return markdown.anchors(parsed)
