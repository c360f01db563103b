"""The pydantic models generated from the schema, and the agent's validators held to them.

The agent validates with core schemas that ``agent.models.builder`` writes
without pydantic's model machinery (start-up time); here each one is compared,
for every command of the agent and of the example plugin, with what pydantic
compiles from the command's model, so that the two cannot drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import BaseModel, TypeAdapter, ValidationError
from trio_qga_procinfo import plugin

from agent.daemon import cli
from agent.host.client import QgaClient
from agent.host.errors import ClientError
from agent.models.builder import ModelFactory, describe
from agent.models.generated import SchemaModels, builtin_models
from agent.models.schema import SchemaDefs, load_builtin, parse
from agent.models.struct import Struct

PLUGIN_DEFS = parse(plugin.schema, "trio-qga-procinfo")
SCHEMAS = {"agent": load_builtin(), "procinfo": PLUGIN_DEFS}


def comparable(schema: Any, definitions: dict[str, Any] | None = None) -> Any:
    """A core schema as validation sees it: shared definitions inlined, each class
    by its name, without what only serves pydantic's own bookkeeping and JSON
    Schema (``ref``, ``metadata``)."""
    if isinstance(schema, list):
        return [comparable(item, definitions) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "definitions":
        shared = {d["ref"]: d for d in schema["definitions"]}
        return comparable(schema["schema"], {**(definitions or {}), **shared})
    if schema.get("type") == "definition-ref":
        assert definitions is not None
        return comparable(definitions[schema["schema_ref"]], definitions)
    found = {}
    for key, value in schema.items():
        if key in ("ref", "metadata"):
            continue
        if key == "cls":
            assert issubclass(value, BaseModel | Struct), value
            value = f"class {value.__name__}"
        found[key] = comparable(value, definitions)
    return found


def commands_of(name: str) -> list[str]:
    return sorted(SCHEMAS[name].commands)


def models_of(name: str) -> tuple[SchemaDefs, ModelFactory, SchemaModels]:
    defs = SCHEMAS[name]
    models = builtin_models() if name == "agent" else SchemaModels(defs)
    return defs, ModelFactory(defs), models


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_agents_validators_are_what_pydantic_compiles_from_the_models(schema: str) -> None:
    defs, factory, models = models_of(schema)
    assert defs.commands
    for name, command in defs.commands.items():
        arguments = models.arguments(name)
        written = factory.arguments_schema(command)
        if arguments is None:
            assert written is None, name
        else:
            assert written is not None, name
            compiled = arguments.__pydantic_core_schema__
            assert comparable(written) == comparable(compiled), name
        compiled = TypeAdapter(models.returns(name)).core_schema
        assert comparable(factory.returns_schema(command)) == comparable(compiled), name


def test_the_comparison_sees_a_difference_that_changes_validation() -> None:
    defs, factory, models = models_of("agent")
    written = factory.arguments_schema(defs.commands["guest-file-read"])
    assert written is not None
    lax = comparable(written)
    lax["schema"]["fields"]["handle"]["schema"]["strict"] = False
    compiled = models.arguments("guest-file-read")
    assert compiled is not None
    assert lax != comparable(compiled.__pydantic_core_schema__)


def test_models_have_the_schemas_names_and_wire_aliases() -> None:
    models = builtin_models()
    read = models.returns("guest-file-read")
    assert read.__name__ == "GuestFileRead"
    assert read.model_fields["buf_b64"].alias == "buf-b64"
    value = read.model_validate({"count": 1, "buf-b64": "eA==", "eof": False})
    assert value.buf_b64 == "eA=="
    assert value.model_dump(by_alias=True) == {"count": 1, "buf-b64": "eA==", "eof": False}
    arguments = models.arguments("guest-file-read")
    assert arguments is not None
    assert arguments.__name__ == "GuestFileReadArguments"
    assert models.arguments("guest-ping") is None
    assert models.arguments("__io.github.trio-qga_exec-start").__name__ == (  # type: ignore[union-attr]
        "IoGithubTrioQgaExecStartArguments"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"handle": 1, "count": None}, "Invalid parameter type for 'count', expected: integer"),
        ({"handle": 1.0}, "Invalid parameter type for 'handle', expected: integer"),
        ({"handle": 2**63}, "Invalid parameter type for 'handle', expected: integer"),
        ({"handle": 1, "x": 1}, "Parameter 'x' is unexpected"),
        ({}, "Parameter 'handle' is missing"),
    ],
)
def test_models_refuse_what_the_agent_refuses_with_the_same_text(
    arguments: dict[str, Any], message: str
) -> None:
    model = builtin_models().arguments("guest-file-read")
    assert model is not None
    with pytest.raises(ValidationError) as caught:
        model.model_validate(arguments)
    assert describe(caught.value) == message


def test_absent_members_stay_absent_in_a_dump() -> None:
    reply = [{"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1",
              "ip-address-type": "ipv4", "prefix": 8}]}]  # fmt: skip
    models = builtin_models()
    value = models.validate_return("guest-network-get-interfaces", reply)
    assert value[0].hardware_address is None
    assert value[0].ip_addresses[0].ip_address_type == "ipv4"
    assert models.dump_return("guest-network-get-interfaces", value) == reply


def test_union_and_alternate_models() -> None:
    models = builtin_models()
    stats = models.validate_return(
        "guest-get-cpustats",
        [{"type": "linux", "cpu": 0, "user": 1, "nice": 2, "system": 3, "idle": 4}],
    )
    assert type(stats[0]).__name__ == "GuestCpuStats_linux"
    assert stats[0].idle == 4
    seek = models.arguments("guest-file-seek")
    assert seek is not None
    by_name: Any = seek.model_validate({"handle": 1, "offset": 0, "whence": "end"})
    by_value: Any = seek.model_validate({"handle": 1, "offset": 0, "whence": 2})
    assert (by_name.whence, by_value.whence) == ("end", 2)
    with pytest.raises(ValidationError) as caught:
        seek.model_validate({"handle": 1, "offset": 0, "whence": None})
    assert describe(caught.value) == (
        "Invalid parameter type for 'whence', expected: GuestFileWhence"
    )


def test_models_are_made_once() -> None:
    models = builtin_models()
    assert models.returns("guest-info") is models.returns("guest-info")
    assert models.type_of("GuestAgentCommandInfo") is models.type_of("GuestAgentCommandInfo")


# Commands that change nothing: their replies on this machine, through the models.
READ_ONLY = [
    "guest-info",
    "guest-ping",
    "guest-get-time",
    "guest-get-host-name",
    "guest-get-users",
    "guest-get-timezone",
    "guest-get-osinfo",
    "guest-get-load",
    "guest-get-cpustats",
    "guest-get-diskstats",
    "guest-get-disks",
    "guest-get-fsinfo",
    "guest-network-get-interfaces",
    "guest-network-get-route",
    "guest-get-vcpus",
    "guest-get-memory-blocks",
    "guest-get-memory-block-info",
    "guest-fsfreeze-status",
]


def client_json(client: QgaClient, command: str, value: object) -> str:
    """What ``trio-qga-client --json`` prints of a command's (typed) value."""
    return json.dumps(client.models.dump_return(command, value))


def assert_same_json(client: QgaClient, command: str, raw: object) -> None:
    """The model's JSON by alias is the agent's reply value, byte for byte."""
    assert client_json(client, command, client.typed(command, raw)) == json.dumps(raw), command


@pytest.mark.parametrize("command", READ_ONLY)
async def test_the_models_json_is_the_agents_reply(qga_client: QgaClient, command: str) -> None:
    assert_same_json(qga_client, command, await qga_client.execute(command))


async def test_absent_members_stay_absent_through_the_client(
    qga_client: QgaClient, tmp_path: Path
) -> None:
    """guest-exec-status before the program ends has no exitcode nor output."""
    started = await qga_client.execute(
        "guest-exec", {"path": "/bin/sh", "arg": ["-c", "echo out; echo err >&2; sleep 1"],
                       "capture-output": True},
    )  # fmt: skip
    status = await qga_client.call("guest-exec-status", pid=started["pid"])
    assert not status.exited
    assert status.exitcode is None
    assert status.model_fields_set == {"exited"}
    assert client_json(qga_client, "guest-exec-status", status) == '{"exited": false}'
    with trio.fail_after(30):
        while True:
            raw = await qga_client.execute("guest-exec-status", started)
            if raw["exited"]:
                break
            await trio.sleep(0.05)
    assert list(raw) == ["exited", "exitcode", "out-data", "err-data", "out-truncated",
                         "err-truncated"]  # fmt: skip
    assert_same_json(qga_client, "guest-exec-status", raw)
    (tmp_path / "f").write_bytes(b"abc")
    handle = await qga_client.execute("guest-file-open", {"path": str(tmp_path / "f")})
    read = await qga_client.execute("guest-file-read", {"handle": handle})
    assert_same_json(qga_client, "guest-file-read", read)


async def test_a_reply_that_does_not_fit_the_schema_is_an_error(qga_client: QgaClient) -> None:
    with pytest.raises(ClientError, match="guest-get-time: the reply does not match the schema"):
        qga_client.typed("guest-get-time", "soon")
    assert qga_client.typed("guest-x-unknown", {"any": "thing"}) == {"any": "thing"}


# ---------------------------------------------------------- --dump-schema --
def dumped_schema(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    assert cli.main(["--dump-schema", *flags]) == 0
    schemas: dict[str, Any] = json.loads(capsys.readouterr().out)
    return schemas


def test_dump_schema_gives_every_commands_json_schemas(capsys: pytest.CaptureFixture[str]) -> None:
    schemas = dumped_schema(capsys)
    assert set(schemas) == set(SCHEMAS["agent"].commands) | set(PLUGIN_DEFS.commands)
    assert all(set(entry) == {"arguments", "returns"} for entry in schemas.values())
    assert schemas["guest-ping"]["arguments"] is None
    read = schemas["guest-file-read"]
    assert read["arguments"]["required"] == ["handle"]
    assert read["arguments"]["additionalProperties"] is False
    assert list(read["returns"]["properties"]) == ["count", "buf-b64", "eof"]
    assert schemas["guest-info"]["returns"] == builtin_models().returns(
        "guest-info"
    ).model_json_schema(by_alias=True)
    processes = schemas["guest-x-process-list"]["returns"]
    assert processes["type"] == "array"
    assert "rss-bytes" in processes["$defs"]["GuestXProcess"]["properties"]
    assert schemas["guest-x-service-status"]["arguments"]["required"] == ["name"]


def test_dump_schema_without_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(dumped_schema(capsys, "--no-plugins")) == set(SCHEMAS["agent"].commands)
    assert set(dumped_schema(capsys, "--disable-plugin", "procinfo")) == set(
        SCHEMAS["agent"].commands
    )


def test_members_named_as_basemodel_methods() -> None:
    schema = "{ 'struct': 'S', 'data': { 'json': 'int', 'copy': 'str' } }\n"
    models = SchemaModels(parse(schema + "{ 'command': 'x', 'returns': 'S' }", "t"))
    value = models.validate_return("x", {"json": 1, "copy": "c"})
    assert (value.json, value.copy) == (1, "c")
    assert models.dump_return("x", value) == {"json": 1, "copy": "c"}
