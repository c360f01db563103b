"""trio-qga-client's command line: options anywhere, ``--json`` for every subcommand (the
format of docs/client.md), and option errors that name what they expect."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.host import cli
from agent.host.client import StreamChannel
from agent.host.errors import ClientError
from tests.support.clients import SocketClient
from tests.support.processes import running_agent

CLIENT_COMMAND = [sys.executable, "-m", "agent.host.cli"]
KEYS = ["target", "ok", "return", "error", "seconds"]
WHERE = ["--address", "/run/qga.sock"]


def parsed(argv: list[str]) -> dict[str, Any]:
    return vars(cli.parse(argv))


# ------------------------------------------------ options before and after --
@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["cat", "--json", "/etc/hostname"], ["cat", "/etc/hostname", "--json"]),
        (
            ["get", "--progress", "never", "--timeout", "5", "/var/log/syslog", "./log"],
            ["get", "/var/log/syslog", "./log", "--progress", "never", "--timeout", "5"],
        ),
        (
            ["put", "--json", "--jobs", "2", "./log", "/tmp/log"],
            ["put", "./log", "/tmp/log", "--jobs", "2", "--json"],
        ),
        (
            ["fsfreeze", "freeze", "--json", "/mnt/a", "/mnt/b"],
            ["fsfreeze", "freeze", "/mnt/a", "/mnt/b", "--json"],
        ),
        (  # the order of the issue: options first, then the mountpoints
            ["fsfreeze", "freeze-thaw", "--run", "snap", "--deadline", "30", "/mnt/data"],
            ["fsfreeze", "freeze-thaw", "/mnt/data", "--run", "snap", "--deadline", "30"],
        ),
        (
            ["execute", "--json", "guest-sync", '{"id": 1}'],
            ["execute", "guest-sync", '{"id": 1}', "--json"],
        ),
    ],
)
def test_options_before_and_after_the_positionals(before: list[str], after: list[str]) -> None:
    assert parsed([*WHERE, *before]) == parsed([*WHERE, *after])
    assert parsed([*WHERE, *before]) == parsed([*before, *WHERE])  # the address after too


def test_the_fsfreeze_actions_take_their_own_options() -> None:
    args = parsed([*WHERE, "fsfreeze", "freeze-thaw", "--run", "snap", "--deadline", "30", "/d"])
    assert (args["action"], args["run"], args["deadline"], args["mountpoints"]) == (
        "freeze-thaw",
        "snap",
        30.0,
        ["/d"],
    )
    assert parsed([*WHERE, "fsfreeze", "status"])["mountpoints"] == []
    for refused in (["fsfreeze", "status", "/d"], ["fsfreeze", "thaw", "--run", "x"]):
        with pytest.raises(SystemExit):
            cli.parse([*WHERE, *refused])


@pytest.mark.parametrize(
    ("argv", "program"),
    [
        (["run", "--", "sh", "-c", "exit 3"], ["sh", "-c", "exit 3"]),
        (["run", "--json", "--cwd", "/", "--", "ls", "-l"], ["ls", "-l"]),
        (["run", "--env", "A=1", "ls", "-d", "/tmp", "--json"], ["ls", "-d", "/tmp", "--json"]),
        (["run", "--", "sh", "-c", "x", "--timeout", "5"], ["sh", "-c", "x", "--timeout", "5"]),
    ],
)
def test_run_takes_everything_after_the_program(argv: list[str], program: list[str]) -> None:
    """Options come before the program (or ``--``); after it, they are its arguments."""
    from agent.host.operations import program_argv

    assert program_argv(cli.parse([*WHERE, *argv])) == program


@pytest.mark.parametrize(
    ("argv", "path", "args", "as_json"),
    [
        (["exec", "/bin/sh", "-c", "echo hi"], "/bin/sh", ["-c", "echo hi"], False),
        (["exec", "--json", "/bin/ls", "-l", "--json"], "/bin/ls", ["-l", "--json"], True),
        (["exec", "/bin/ls", "-d", "/tmp"], "/bin/ls", ["-d", "/tmp"], False),
    ],
)
def test_exec_takes_everything_after_the_program(
    argv: list[str], path: str, args: list[str], as_json: bool
) -> None:
    found = parsed([*WHERE, *argv])
    assert (found["path"], found["args"], found["json"]) == (path, args, as_json)


def test_domains_before_and_after_the_command_add_up() -> None:
    args = parsed(["-c", "qemu:///system", "-d", "web*", "ping", "-d", "db1", "--domain", "db2"])
    assert args["domain"] == ["web*", "db1", "db2"]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["ping"], "give --address, or --connect and --domain"),
        ([*WHERE, "ping", "--connect", "qemu:///system"], "exclude each other"),
        (["-c", "qemu:///system", "ping"], "--connect needs --domain"),
        ([*WHERE, "-d", "web1", "ping"], "--domain needs --connect"),
        (["-c", "qemu:///system", "-d", "web*", "cat", "/etc/hostname"], "cat needs one domain"),
        (["-c", "qemu:///system", "-d", "a", "-d", "b", "run", "true"], "run needs one domain"),
        (["-c", "qemu:///system", "-d", "web*", "get", "/x", "./x"], "needs {domain} in LOCAL"),
    ],
)
def test_where_to_go_is_checked(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse(argv)
    assert exited.value.code == 2
    assert error in capsys.readouterr().err


# --------------------------------------------------------- option errors --
@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--timeout", "abc"], "argument --timeout: expected seconds, a number > 0, got 'abc'"),
        (["--timeout", "0"], "argument --timeout: expected seconds, a number > 0, got '0'"),
        (["--jobs", "0"], "argument --jobs: expected a whole number > 0, got '0'"),
        (["--jobs", "2.5"], "argument --jobs: expected a whole number > 0, got '2.5'"),
        (
            ["--domain-timeout", "inf"],
            "argument --domain-timeout: expected seconds, a number > 0, got 'inf'",
        ),
        (
            ["fsfreeze", "freeze-thaw", "--deadline", "soon"],
            "argument --deadline: expected seconds, a number > 0, got 'soon'",
        ),
        (
            ["ping", "--timeout", "-1"],
            "argument --timeout: expected seconds, a number > 0, got '-1'",
        ),
    ],
)
def test_option_errors_name_the_option_and_what_it_expects(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [] if argv[0] in ("fsfreeze", "ping") else ["ping"]
    with pytest.raises(SystemExit) as exited:
        cli.parse([*WHERE, *argv, *command])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(error)


# ------------------------------------------- --json, every subcommand, real agent --
@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Our agent; its mount table is empty, so a freeze freezes nothing."""
    tmp_path = tmp_path_factory.mktemp("agent")
    (tmp_path / "mounts").write_text("")
    with running_agent(tmp_path, "--mount-table", str(tmp_path / "mounts")) as (_, sock):
        yield sock


def client(sock: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLIENT_COMMAND, "--address", str(sock), *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def json_lines(done: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    for line in lines:
        assert list(line) == KEYS or list(line) == ["summary"], line
    return lines


def one_document(done: subprocess.CompletedProcess[bytes], sock: Path) -> dict[str, Any]:
    [document] = json_lines(done)
    assert document["target"] == str(sock)
    assert isinstance(document["seconds"], float | int)
    return document


def test_json_for_every_subcommand_that_succeeds(agent: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello\x00\xff")
    expected: list[tuple[list[str], Any]] = [
        (["ping"], {}),
        (["cat", str(tmp_path / "f")], {"count": 7, "buf-b64": "aGVsbG8A/w=="}),
        (
            ["get", str(tmp_path / "f"), str(tmp_path / "got")],
            {"path": str(tmp_path / "f"), "local": str(tmp_path / "got"), "bytes": 7},
        ),
        (
            ["put", str(tmp_path / "f"), str(tmp_path / "put")],
            {"path": str(tmp_path / "put"), "local": str(tmp_path / "f"), "bytes": 7},
        ),
        (["fsfreeze", "status"], "thawed"),
        (["fsfreeze", "freeze", "/not/a/mountpoint"], 0),
        (["fsfreeze", "thaw"], 0),
        (["execute", "guest-sync", '{"id": 7}'], 7),
        (
            ["exec", "/bin/sh", "-c", "printf out; printf err >&2"],
            {
                "status": 0,
                "exitcode": 0,
                "signal": None,
                "out-data": "b3V0",
                "err-data": "ZXJy",
                "out-truncated": False,
                "err-truncated": False,
            },
        ),
    ]
    for args, value in expected:
        done = client(agent, "--json", *args)
        assert done.returncode == 0, (args, done.stderr)
        assert one_document(done, agent) | {"seconds": 0} == {
            "target": str(agent),
            "ok": True,
            "return": value,
            "error": None,
            "seconds": 0,
        }, args
    assert (tmp_path / "got").read_bytes() == (tmp_path / "put").read_bytes() == b"hello\x00\xff"
    sync = one_document(client(agent, "sync", "--json"), agent)["return"]
    assert isinstance(sync, int)
    assert sync > 0
    info = one_document(client(agent, "info", "--json"), agent)["return"]
    assert info["version"] == "0.1.0"


def raw_return(sock: Path, command: str) -> object:
    """The agent's reply value, read without the client (one client at a time)."""
    raw = SocketClient(sock)
    try:
        raw.resync(1)
        return raw.execute(command)["return"]
    finally:
        raw.close()


@pytest.mark.parametrize(
    "command",
    ["guest-info", "guest-get-osinfo", "guest-get-timezone", "guest-network-get-interfaces"],
)
def test_json_return_is_the_agents_reply_value_byte_for_byte(agent: Path, command: str) -> None:
    """Through the command's model and back by wire names, absent members absent
    (guest-get-osinfo leaves out what the guest's os-release lacks)."""
    expected = json.dumps(raw_return(agent, command))
    done = client(agent, "--json", "execute", command)
    assert done.returncode == 0, done.stderr
    assert json.dumps(one_document(done, agent)["return"]) == expected
    if command == "guest-info":
        shown = client(agent, "--json", "info")
        assert json.dumps(one_document(shown, agent)["return"]) == expected


def test_json_run_takes_stdin_and_gives_the_programs_status(agent: Path) -> None:
    done = client(agent, "run", "--json", "--", "sh", "-c", "cat; exit 3", stdin=b"input")
    assert done.returncode == 3
    document = one_document(done, agent)
    assert (document["ok"], document["error"]) == (
        False,
        {"class": "ExitStatus", "desc": "exit status 3"},
    )
    assert (document["return"]["status"], document["return"]["out-data"]) == (3, "aW5wdXQ=")


@pytest.mark.parametrize(
    ("args", "status", "kind", "desc"),
    [
        (["cat", "/nonexistent/file"], 2, "GenericError", "failed to open file '/nonexistent/"),
        (["execute", "guest-no-such"], 2, "CommandNotFound", "The command guest-no-such has"),
        (["execute", "guest-sync", "[1]"], 1, "LocalError", "arguments must be a JSON object"),
        (
            ["exec", "/bin/sh", "-c", "echo oops >&2; exit 4"],
            4,
            "ExitStatus",
            "exit status 4: oops",
        ),
        (["get", "/nonexistent/file", "/tmp/x"], 2, "GenericError", "failed to open file"),
        (["put", "/nonexistent/local", "/tmp/x"], 1, "LocalError", "No such file or directory"),
        (["run", "-t", "--", "true"], 1, "LocalError", "run -t is interactive"),
    ],
)
def test_json_for_errors(agent: Path, args: list[str], status: int, kind: str, desc: str) -> None:
    done = client(agent, "--json", *args)
    assert done.returncode == status, done.stderr
    document = one_document(done, agent)
    assert (document["ok"], document["error"]["class"]) == (False, kind)
    assert desc in document["error"]["desc"]


def test_json_when_the_agent_cannot_be_reached(tmp_path: Path) -> None:
    done = client(tmp_path / "nothing.sock", "ping", "--json")
    assert done.returncode == 1
    document = one_document(done, tmp_path / "nothing.sock")
    assert document["error"]["class"] == "ClientError"
    assert document["error"]["desc"].startswith("cannot connect to")


def test_json_freeze_thaw_gives_the_target_and_a_summary(agent: Path) -> None:
    done = client(
        agent,
        "fsfreeze",
        "freeze-thaw",
        "--run",
        "exit 3",
        "--deadline",
        "30",
        "/no/such",
        "--json",
    )
    assert done.returncode == 1  # the command failed
    target, summary = json_lines(done)
    window = target["return"].pop("window")
    assert (target["ok"], target["return"]) == (True, {"frozen": 0, "thawed": 0})
    assert 0 <= window <= summary["summary"]["window"] <= summary["summary"]["seconds"]
    assert summary["summary"] | {"seconds": 0, "window": 0} == {
        "targets": 1,
        "ok": 1,
        "failed": 0,
        "seconds": 0,
        "error": None,
        "all_frozen": True,
        "command": {"status": 3, "error": None},
        "window": 0,
    }


def test_freeze_thaw_text_with_options_before_the_mountpoints(agent: Path) -> None:
    done = client(
        agent, "fsfreeze", "freeze-thaw", "--run", "echo while-frozen", "--deadline", "30", "/x"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "while-frozen"
    assert "all frozen: True" in lines
    assert "command: exit status 0" in lines


# ------------------------------------------------- several domains, --json --
class FakeConnection:
    """libvirt as the fleet path sees it: each running domain's channel an agent's socket."""

    def __init__(self, sockets: dict[str, Path]) -> None:
        self.sockets = sockets

    async def domain_names(self) -> list[str]:
        return list(self.sockets)

    async def channel(self, name: str, request_timeout: float) -> StreamChannel:
        if name not in self.sockets:
            raise ClientError(f"{name}: Domain not found")
        channel = StreamChannel(
            await trio.open_unix_socket(str(self.sockets[name])), request_timeout
        )
        await channel.resync()
        return channel

    async def aclose(self) -> None:
        pass


@pytest.fixture(scope="module")
def second_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp_path = tmp_path_factory.mktemp("second")
    (tmp_path / "mounts").write_text("")
    with running_agent(tmp_path, "--mount-table", str(tmp_path / "mounts")) as (_, sock):
        yield sock


@pytest.fixture
def fake_libvirt(agent: Path, second_agent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``test:///fleet`` runs db1 and web1 (our agent) and web2 (a second one)."""
    from agent.host import libvirt_channel

    async def open_connection(uri: str, limit: int = 16) -> FakeConnection:
        if uri != "test:///fleet":
            raise ClientError(f"cannot connect to {uri}: no such host")
        return FakeConnection({"db1": agent, "web1": agent, "web2": second_agent})

    monkeypatch.setattr(libvirt_channel.LibvirtConnection, "open", open_connection)


def fleet_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[Any]]:
    status = cli.main(["--connect", "test:///fleet", *argv, "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return status, lines


@pytest.mark.usefixtures("fake_libvirt")
def test_json_lines_for_several_domains_then_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, lines = fleet_json(capsys, "-d", "web*", "-d", "stopped", "ping")
    assert status == 1
    assert [(line.get("target"), line.get("ok")) for line in lines[:3]] == [
        ("web1", True),
        ("web2", True),
        ("stopped", False),
    ]
    assert lines[2]["error"] == {"class": "ClientError", "desc": "stopped: Domain not found"}
    summary = lines[3]["summary"]
    assert (summary["targets"], summary["ok"], summary["failed"], summary["error"]) == (
        3,
        2,
        1,
        None,
    )


@pytest.mark.usefixtures("fake_libvirt")
def test_json_when_no_domain_is_reached(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = fleet_json(capsys, "-d", "mail*", "info")
    assert status == 1
    assert lines == [
        {
            "summary": {
                "targets": 0,
                "ok": 0,
                "failed": 0,
                "seconds": lines[0]["summary"]["seconds"],
                "error": {"class": "ClientError", "desc": "no running domain matches 'mail*'"},
            }
        }
    ]
    status = cli.main(["--connect", "test:///elsewhere", "-d", "a", "-d", "b", "ping", "--json"])
    [line] = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert status == 1
    assert line["summary"]["error"]["desc"] == "cannot connect to test:///elsewhere: no such host"


@pytest.mark.usefixtures("fake_libvirt")
def test_freeze_thaw_over_several_domains_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = fleet_json(
        capsys, "-d", "web*", "fsfreeze", "freeze-thaw", "--run", "true", "/no/such"
    )
    assert status == 0
    assert [line["return"] | {"window": 0} for line in lines[:2]] == [
        {"frozen": 0, "thawed": 0, "window": 0}
    ] * 2
    assert lines[2]["summary"]["command"] == {"status": 0, "error": None}
