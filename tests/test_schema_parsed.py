"""The agent's schema ships parsed, so that no start parses it: the parsed form
must say what the QAPI text says (after an edit of the text, run
``scripts/parse-schema``), and a stale one is not used."""

from __future__ import annotations

import json
from importlib import resources

from agent.models.schema import (
    BUILTIN_SCHEMA,
    PARSED_SCHEMA,
    from_parsed,
    load_builtin,
    parse,
    parsed_builtin,
)


def shipped(name: str) -> str:
    return resources.files("agent.models").joinpath(name).read_text("utf-8")


def test_the_parsed_schema_is_the_qapi_text_parsed() -> None:
    assert shipped(PARSED_SCHEMA) == parsed_builtin(), (
        "agent/models/qga-schema.json changed: run scripts/parse-schema"
    )
    assert load_builtin() == parse(shipped(BUILTIN_SCHEMA), BUILTIN_SCHEMA)


def test_the_parsed_form_is_what_a_start_reads() -> None:
    text = shipped(BUILTIN_SCHEMA)
    emptied = json.loads(shipped(PARSED_SCHEMA)) | {"definitions": []}
    assert from_parsed(text, json.dumps(emptied)).commands == {}


def test_a_stale_or_missing_parsed_form_is_not_used() -> None:
    edited = shipped(BUILTIN_SCHEMA) + "{ 'command': 'guest-x-added-since' }\n"
    assert "guest-x-added-since" in from_parsed(edited, shipped(PARSED_SCHEMA)).commands
    assert from_parsed(edited, None) == parse(edited, BUILTIN_SCHEMA)
    assert from_parsed(edited, "not json") == parse(edited, BUILTIN_SCHEMA)
