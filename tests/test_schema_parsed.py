"""The agent's schema ships parsed, so that no start parses it: the parsed form
must say what the QAPI text says (after an edit of the text, run
``scripts/parse-schema``)."""

from __future__ import annotations

from importlib import resources

from agent.models.schema import BUILTIN_SCHEMA, PARSED_SCHEMA, load_builtin, parse, parsed_builtin


def test_the_parsed_schema_is_the_qapi_text_parsed() -> None:
    shipped = resources.files("agent.models").joinpath(PARSED_SCHEMA).read_text("utf-8")
    assert shipped == parsed_builtin()


def test_loading_it_gives_the_definitions_of_the_text() -> None:
    text = resources.files("agent.models").joinpath(BUILTIN_SCHEMA).read_text("utf-8")
    assert load_builtin() == parse(text, BUILTIN_SCHEMA)
