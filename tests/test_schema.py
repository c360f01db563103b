"""The schema file, the models built from it, and the registry's checks."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import ValidationError

from agent.core.registry import HandlerSet, Registry, RegistryError
from agent.models.builder import ModelFactory, describe
from agent.models.schema import SchemaError, load_builtin, parse
from agent.models.struct import Struct

WINDOWS_ONLY = {"guest-get-devices"}  # qemu-ga on Linux lists it disabled; we leave it out
QEMU_SCHEMA = Path("/usr/share/doc/qemu-guest-agent/qapi-schema.json.gz")


def test_every_type_and_command_of_the_builtin_schema_builds() -> None:
    defs = load_builtin()
    factory = ModelFactory(defs)
    for name in defs.types:
        factory.type_of(name)
    for command in defs.commands.values():
        models = factory.command(command)
        assert models.returns is not None
        _ = models.arguments


def test_frozen_allow_list_comes_from_the_schema() -> None:
    allowed = {c.name for c in load_builtin().commands.values() if c.allowed_while_frozen}
    assert allowed == {
        "guest-ping",
        "guest-info",
        "guest-sync",
        "guest-sync-delimited",
        "guest-fsfreeze-status",
        "guest-fsfreeze-thaw",
    }


def test_success_response_false_for_power_commands() -> None:
    quiet = {c.name for c in load_builtin().commands.values() if not c.success_response}
    assert quiet == {
        "guest-shutdown",
        "guest-suspend-disk",
        "guest-suspend-ram",
        "guest-suspend-hybrid",
    }


def _qemu_definitions() -> dict[str, Any]:
    if not QEMU_SCHEMA.exists():
        pytest.fail(f"{QEMU_SCHEMA} missing: scripts/test installs qemu-guest-agent")
    text = gzip.decompress(QEMU_SCHEMA.read_bytes()).decode()
    # QEMU's file has 'if' conditions, which ours has no use for.
    defs = parse(re.sub(r",\s*'if': 'CONFIG_POSIX'", "", text), str(QEMU_SCHEMA))
    return {"commands": defs.commands, "types": defs.types}


def test_names_and_member_types_match_qemu_ga_7_2() -> None:
    """Every command of qemu-ga 7.2 is in our schema with the same members and types.

    Ours follows the current QEMU schema where it moved on since 7.2 (see
    docs/schema-audit.md): ``capture-output`` became an alternate (8.0) and
    GuestFilesystemInfo gained ``total-bytes-privileged`` (9.1).
    """
    qemu = _qemu_definitions()
    ours = load_builtin()
    for name, command in qemu["commands"].items():
        if name in WINDOWS_ONLY:
            assert name not in ours.commands
            continue
        assert name in ours.commands, name
        mine = ours.commands[name]
        theirs_data = dict(command.data or {})
        mine_data = dict(mine.data or {})  # type: ignore[arg-type]
        if name == "guest-exec":
            assert theirs_data.pop("*capture-output") == "bool"
            assert mine_data.pop("*capture-output") == "GuestExecCaptureOutput"
        assert mine_data == theirs_data, name
        assert mine.returns == command.returns, name
        assert mine.success_response == command.success_response, name
    for name, definition in qemu["types"].items():
        if name in ("GuestDeviceInfo", "GuestDeviceId", "GuestDeviceIdPCI", "GuestDeviceType"):
            continue  # guest-get-devices is Windows-only
        assert name in ours.types, name
        theirs_type = definition.get("data")
        mine_type = ours.types[name]["data"]
        if name == "GuestFilesystemInfo":
            mine_type = dict(mine_type)
            assert mine_type.pop("*total-bytes-privileged") == "uint64"
        assert mine_type == theirs_type, name


def test_members_qemu_renamed_or_added_after_7_2() -> None:
    """What the current QEMU (10.0 and later) has that 7.2 has not, letter for letter."""
    types = load_builtin().types
    assert types["GuestLoadAverage"]["data"] == {
        "load1m": "number",
        "load5m": "number",
        "load15m": "number",
    }
    assert types["GuestExecCaptureOutput"]["data"] == {
        "flag": "bool",
        "mode": "GuestExecCaptureOutputMode",
    }


def _referenced(expr: object) -> set[str]:
    """The type names a QAPI type expression or member dict mentions."""
    if isinstance(expr, str):
        return {expr}
    if isinstance(expr, list):
        return set().union(*map(_referenced, expr))
    if isinstance(expr, dict):
        return set().union(*map(_referenced, expr.values()))
    return set()


def test_every_referenced_type_is_defined_and_every_type_is_used() -> None:
    defs = load_builtin()
    builtin = {"str", "bool", "number", "any", "null", "int", "size"}
    builtin |= {f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)}
    used: set[str] = set()
    for command in defs.commands.values():
        used |= _referenced(command.data) | _referenced(command.returns)
    for definition in defs.types.values():
        if "enum" in definition:
            continue
        used |= _referenced(definition.get("data")) | _referenced(definition.get("base"))
    assert used - builtin - set(defs.types) == set()
    assert set(defs.types) - used == set()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"vcpus": [{"logical-id": 1}]}, "Parameter 'vcpus[0].online' is missing"),
        ({"vcpus": {}}, "Invalid parameter type for 'vcpus', expected: array"),
        (
            {"vcpus": [{"logical-id": "a", "online": True}]},
            "Invalid parameter type for 'vcpus[0].logical-id', expected: integer",
        ),
        (
            {"vcpus": [{"logical-id": 1, "online": True, "x": 1}]},
            "Parameter 'vcpus[0].x' is unexpected",
        ),
    ],
)
def test_nested_argument_errors_name_the_path_as_qemu_ga(
    arguments: dict[str, Any], message: str
) -> None:
    defs = load_builtin()
    model = ModelFactory(defs).command(defs.commands["guest-set-vcpus"]).arguments
    assert model is not None
    with pytest.raises(ValidationError) as caught:
        model.validate_python(arguments)
    assert describe(caught.value) == message


@pytest.mark.parametrize(
    ("whence", "result"),
    [
        (1, 1),
        ("end", "end"),
        ("xx", "Parameter 'whence' does not accept value 'xx'"),
        (1.5, "Invalid parameter type for 'whence', expected: integer"),
        (None, "Invalid parameter type for 'whence', expected: GuestFileWhence"),
        (True, "Invalid parameter type for 'whence', expected: GuestFileWhence"),
    ],
)
def test_alternates_pick_their_branch_by_json_kind(whence: object, result: object) -> None:
    defs = load_builtin()
    model = ModelFactory(defs).command(defs.commands["guest-file-seek"]).arguments
    assert model is not None
    arguments = {"handle": 1, "offset": 0, "whence": whence}
    if isinstance(result, str) and " " in result:
        with pytest.raises(ValidationError) as caught:
            model.validate_python(arguments)
        assert describe(caught.value) == result
    else:
        assert model.validate_python(arguments).whence == result


def test_optional_members_refuse_explicit_null() -> None:
    defs = load_builtin()
    model = ModelFactory(defs).command(defs.commands["guest-file-read"]).arguments
    assert model is not None
    assert model.validate_python({"handle": 1}).count is None
    with pytest.raises(ValidationError) as caught:
        model.validate_python({"handle": 1, "count": None})
    assert describe(caught.value) == "Invalid parameter type for 'count', expected: integer"


def test_unions_validate_by_discriminator() -> None:
    defs = load_builtin()
    adapter = ModelFactory(defs).command(defs.commands["guest-get-cpustats"]).returns
    adapter.validate_python(
        [{"type": "linux", "cpu": 0, "user": 1, "nice": 2, "system": 3, "idle": 4}]
    )
    with pytest.raises(ValidationError):
        adapter.validate_python([{"type": "linux", "cpu": 0}])


def test_malformed_schema_is_refused_with_its_origin() -> None:
    with pytest.raises(SchemaError, match="here: JSON parse error"):
        parse("{ 'command': 'x' ", "here")
    with pytest.raises(SchemaError, match="unknown keys"):
        parse("{ 'command': 'x', 'colour': 'red' }\n", "here")
    with pytest.raises(SchemaError, match="defined twice"):
        parse("{ 'command': 'x' }\n{ 'command': 'x' }\n", "here")


def test_registry_checks_handlers_against_the_schema() -> None:
    defs = parse("{ 'command': 'x-a', 'data': { 'buf-b64': 'str', '*count': 'int' } }\n", "t")
    good = HandlerSet()

    @good.command("x-a")
    def handler(ctx: object, buf_b64: str, count: int | None) -> dict[str, object]:
        return {}

    registry = Registry(defs)
    registry.add(good, "first")
    with pytest.raises(RegistryError, match="already provided by first"):
        registry.add(good, "second")

    wrong = HandlerSet()

    @wrong.command("x-a")
    def mistyped(ctx: object, buf: str) -> dict[str, object]:
        return {}

    with pytest.raises(RegistryError, match="schema says"):
        Registry(defs).add(wrong)

    unknown = HandlerSet()

    @unknown.command("x-b")
    def absent(ctx: object) -> dict[str, object]:
        return {}

    with pytest.raises(RegistryError, match="not in the schema"):
        Registry(defs).add(unknown)


GATES_SCHEMA = """
{ 'command': 'x-exec' }
{ 'command': 'x-exec-status' }
{ 'command': 'x-stream', 'gated-by': ['x-exec', 'x-exec-status'] }
{ 'command': 'x-misspelt', 'gated-by': ['x-exe'] }
{ 'command': 'x-chained', 'gated-by': ['x-stream'] }
"""


def handlers_of(*names: str) -> HandlerSet:
    handlers = HandlerSet()
    for name in names:
        handlers.command(name)(lambda ctx: {})
    return handlers


def test_gated_by_is_read_from_the_schema() -> None:
    defs = parse(GATES_SCHEMA, "t")
    assert defs.commands["x-stream"].gated_by == ("x-exec", "x-exec-status")
    assert defs.commands["x-exec"].gated_by == ()
    registry = Registry(defs)
    registry.add(handlers_of("x-exec", "x-stream"))
    stream = registry.get("x-stream")
    assert stream is not None
    assert stream.gated_by == ("x-exec", "x-exec-status")


@pytest.mark.parametrize("gates", ["[]", "'x-exec'", "[1]"])
def test_gated_by_must_be_a_list_of_names(gates: str) -> None:
    with pytest.raises(SchemaError, match="'gated-by' must be a non-empty list of command names"):
        parse(f"{{ 'command': 'x', 'gated-by': {gates} }}\n", "here")


def test_a_gate_must_be_a_command_of_the_agents_schema_without_gates() -> None:
    """A misspelt gate would never match a filter: the command would not be gated."""
    defs = parse(GATES_SCHEMA, "t")
    with pytest.raises(RegistryError, match="x-misspelt is gated by x-exe, which is not a command"):
        Registry(defs).add(handlers_of("x-misspelt"), "plugin p")
    with pytest.raises(RegistryError, match="x-chained is gated by x-stream, which is gated"):
        Registry(defs).add(handlers_of("x-chained"), "plugin p")
    plugin = parse("{ 'command': 'x-p', 'gated-by': ['x-p-own'] }\n{ 'command': 'x-p-own' }\n", "p")
    with pytest.raises(RegistryError, match="x-p-own, which is not a command of the agent's own"):
        Registry(defs).add(handlers_of("x-p"), "plugin p", plugin)
    registry = Registry(defs)  # gates from the agent's schema, handlers or not
    registry.add(
        handlers_of("x-p"), "plugin p", parse("{ 'command': 'x-p', 'gated-by': ['x-exec'] }", "p")
    )


# The commands of ours that qemu-ga has not, and the qemu-ga commands that gate each
# (SECURITY.md, "Extensions and their gates"). A new extension fails here until
# someone has decided what gates it.
EXTENSION_GATES = {
    **{
        f"__io.github.trio-qga_exec-{name}": ("guest-exec", "guest-exec-status")
        for name in ("start", "read", "write", "close-stdin", "resize", "signal")
    },
}
NEWER_QEMU = {"guest-get-load", "guest-network-get-route"}  # qemu-ga's, after 7.2


def test_every_extension_declares_its_gates() -> None:
    qemu = _qemu_definitions()["commands"]
    ours = load_builtin().commands
    extensions = {name: ours[name].gated_by for name in ours if name not in qemu}
    assert extensions == {**EXTENSION_GATES, **{name: () for name in NEWER_QEMU}}
    assert not any(ours[name].gated_by for name in qemu if name in ours)


TYPED_SCHEMA = """
{ 'enum': 'Whence', 'data': ['set', 'cur', 'end'] }
{ 'alternate': 'WhenceArg', 'data': { 'value': 'int', 'name': 'Whence' } }
{ 'struct': 'Item', 'data': { 'n': 'int' } }
{ 'command': 'x-t', 'data': { 'handle': 'int', '*whence': 'WhenceArg',
  'items': ['Item'], 'names': ['str'], 'any': 'any' } }
"""


def typed_handler_set(function: Callable[..., object]) -> HandlerSet:
    handlers = HandlerSet()
    handlers.command("x-t")(function)
    return handlers


def test_registry_accepts_annotations_that_take_every_schema_value() -> None:
    def handler(
        ctx: object,
        handle: int,
        whence: int | str | None,
        items: Sequence[Struct],
        names: list[str],
        any: Any,
    ) -> None:
        return None

    Registry(parse(TYPED_SCHEMA, "t")).add(typed_handler_set(handler))


def wrong_handle(
    ctx: object, handle: str, whence: Any, items: Any, names: Any, any: Any
) -> None: ...
def whence_not_optional(
    ctx: object, handle: int, whence: int | str, items: Any, names: Any, any: Any
) -> None: ...
def whence_without_its_name_branch(
    ctx: object, handle: int, whence: int | None, items: Any, names: Any, any: Any
) -> None: ...
def wrong_element(
    ctx: object, handle: int, whence: Any, items: Any, names: list[int], any: Any
) -> None: ...
def any_as_str(ctx: object, handle: int, whence: Any, items: Any, names: Any, any: str) -> None: ...


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (wrong_handle, "annotates handle as str, schema says int"),
        (whence_not_optional, r"annotates whence as int \| str, schema says WhenceArg or None"),
        (whence_without_its_name_branch, r"annotates whence as int \| None"),
        (wrong_element, r"annotates names as list\[int\], schema says \['str'\]"),
        (any_as_str, "annotates any as str, schema says any"),
    ],
)
def test_registry_refuses_annotations_that_do_not_fit_the_schema(
    function: Callable[..., object], message: str
) -> None:
    with pytest.raises(RegistryError, match=message):
        Registry(parse(TYPED_SCHEMA, "t")).add(typed_handler_set(function))


def test_delimited_reply_and_secrets_are_read_from_the_schema() -> None:
    commands = load_builtin().commands
    assert {name for name, c in commands.items() if c.delimited_reply} == {"guest-sync-delimited"}
    assert commands["guest-set-user-password"].secret_arguments == {"password"}
    assert commands["guest-file-read"].secret_returns == {"buf-b64"}
    assert commands["guest-exec-status"].secret_returns == {"out-data", "err-data"}
    assert not commands["guest-ping"].secret_arguments | commands["guest-ping"].secret_returns


SECRETS_SCHEMA = """
{ 'struct': 'Out', 'data': { 'token': 'str', 'n': 'int' } }
{ 'command': 'x-s', 'data': { 'key': 'str' }, 'returns': ['Out'],
  'secret-arguments': ['key'], 'secret-returns': ['token'] }
"""


def test_secret_members_must_exist() -> None:
    """A misspelt secret would be logged all the same: the registry refuses it."""
    Registry(parse(SECRETS_SCHEMA, "t")).add(handlers_with_key("x-s"))
    misspelt = SECRETS_SCHEMA.replace("'secret-arguments': ['key']", "'secret-arguments': ['kye']")
    with pytest.raises(RegistryError, match=r"secret arguments \['kye'\] are not its members"):
        Registry(parse(misspelt, "t")).add(handlers_with_key("x-s"))
    misspelt = SECRETS_SCHEMA.replace("'secret-returns': ['token']", "'secret-returns': ['tok']")
    with pytest.raises(RegistryError, match=r"secret returns \['tok'\] are not members"):
        Registry(parse(misspelt, "t")).add(handlers_with_key("x-s"))
    with pytest.raises(SchemaError, match="'secret-returns' must be a non-empty list of members"):
        parse("{ 'command': 'x', 'secret-returns': 'token' }\n", "here")


def handlers_with_key(name: str) -> HandlerSet:
    handlers = HandlerSet()
    handlers.command(name)(lambda ctx, key: [])
    return handlers


def test_commands_left_for_later_load_when_first_needed() -> None:
    """``Registry.add_later``: the agent's handler groups and plugins beyond the
    first reply's load on a lookup that misses (those up to the one it needs),
    on a listing, or at ``complete``; each load runs once."""
    defs = parse(GATES_SCHEMA, "t")
    loads: list[str] = []

    def load(name: str) -> Callable[[], None]:
        def add() -> None:
            loads.append(name)
            registry.add(handlers_of(name))

        return add

    registry = Registry(defs)
    registry.add(handlers_of("x-exec"))
    registry.add_later(load("x-exec-status"))
    registry.add_later(load("x-stream"))
    assert registry.get("x-exec") is not None
    assert loads == []  # a hit loads nothing
    assert not registry.complete_now
    assert registry.get("x-stream") is not None
    assert loads == ["x-exec-status", "x-stream"]  # in order, all of them
    assert registry.complete_now
    assert registry.get("x-nothing") is None
    assert loads == ["x-exec-status", "x-stream"]

    partly = Registry(defs)  # a lookup runs the loads up to the one that adds the name
    partly.add_later(lambda: partly.add(handlers_of("x-exec")))
    partly.add_later(lambda: partly.add(handlers_of("x-exec-status")))
    partly.add_later(lambda: partly.add(handlers_of("x-stream")))
    assert partly.get("x-exec-status") is not None
    assert not partly.complete_now  # x-stream's load still waits
    assert partly.get("x-exec") is not None
    assert not partly.complete_now

    listed = Registry(defs)
    listed.add_later(lambda: listed.add(handlers_of("x-exec")))
    assert [command.name for command in listed] == ["x-exec"]

    preloaded = Registry(defs)  # the agent's own groups after a first reply, not the plugins

    def own_groups() -> None:
        preloaded.add(handlers_of("x-exec"))

    preloaded.add_later(own_groups)
    preloaded.add_later(lambda: preloaded.add(handlers_of("x-stream")))
    preloaded.complete(through=own_groups)
    assert preloaded.get("x-exec") is not None
    assert not preloaded.complete_now
    preloaded.complete(through=own_groups)  # has run: nothing more
    assert not preloaded.complete_now
    assert preloaded.get("x-stream") is not None
    assert preloaded.complete_now

    failing = Registry(defs)

    def broken() -> None:
        raise RuntimeError("a bug in a handler module")

    failing.add_later(broken)
    with pytest.raises(RuntimeError):
        failing.get("x-exec")
    assert failing.get("x-exec") is None  # not tried again
