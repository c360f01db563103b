"""The state-changing command set beside the real qemu-ga: reply shapes and texts.

Only what cannot change this machine is sent to qemu-ga: guest-exec of
harmless programs, guest-exec-status, guest-ssh-get-authorized-keys and the
read-only vCPU and memory-block commands. The rest is covered by the unit
tests (recorded, in a scratch root) and by ``test_vm_changes.py``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import SocketClient
from tests.support.processes import running_agent
from tests.support.reference import running_qemu_ga

pytestmark = pytest.mark.qemu_ga


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SocketClient]]:
    with (
        running_qemu_ga(tmp_path_factory.mktemp("qemu-ga")) as theirs,
        running_agent(tmp_path_factory.mktemp("trio-qga")) as (_, ours),
    ):
        both = {"qemu-ga": SocketClient(theirs), "trio-qga": SocketClient(ours)}
        yield both
        for client in both.values():
            client.close()


def both(clients: dict[str, SocketClient], name: str, **arguments: Any) -> list[Any]:
    return [client.execute(name, arguments) for client in clients.values()]


def exec_and_wait(client: SocketClient, arguments: dict[str, Any]) -> dict[str, Any]:
    reply = client.execute("guest-exec", arguments)
    if "error" in reply:
        return reply
    pid = reply["return"]["pid"]
    deadline = time.monotonic() + 10
    while True:
        status = client.execute("guest-exec-status", {"pid": pid})
        if "error" in status or status["return"]["exited"]:
            again = client.execute("guest-exec-status", {"pid": pid})
            assert again == {"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}
            return status
        assert time.monotonic() < deadline
        time.sleep(0.01)


EXEC_CASES: dict[str, dict[str, Any]] = {
    "captured, exit code": {
        "path": "/bin/sh",
        "arg": ["-c", "echo out; echo err >&2; exit 3"],
        "capture-output": True,
    },
    "no capture": {"path": "/bin/sh", "arg": ["-c", "echo out"]},
    "capture false": {"path": "/bin/echo", "arg": ["x"], "capture-output": False},
    "signal": {"path": "/bin/sh", "arg": ["-c", "kill -9 $$"], "capture-output": True},
    "input-data": {
        "path": "/bin/cat",
        "input-data": base64.b64encode(b"hello").decode(),
        "capture-output": True,
    },
    "env replaces the environment": {
        "path": "/usr/bin/env",
        "env": ["A=b", "C=d=e"],
        "capture-output": True,
    },
    "stdin is /dev/null": {
        "path": "/bin/readlink",
        "arg": ["/proc/self/fd/0"],
        "capture-output": True,
    },
    "PATH search": {"path": "true"},
    "not found": {"path": "/nonexistent/program"},
    "not executable": {"path": "$DIR/data"},
    "no #! line: run by /bin/sh": {"path": "$DIR/script", "arg": ["a"], "capture-output": True},
    "bad base64": {"path": "/bin/true", "input-data": "!!"},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("exec-files")
    (directory / "data").write_text("echo not run\n")
    script = directory / "script"
    script.write_text('echo "from sh: $0 $1"\n')
    script.chmod(0o755)
    return directory


@pytest.mark.parametrize("case", list(EXEC_CASES))
def test_exec_replies_match(clients: dict[str, SocketClient], files: Path, case: str) -> None:
    arguments = {
        key: value.replace("$DIR", str(files)) if isinstance(value, str) else value
        for key, value in EXEC_CASES[case].items()
    }
    theirs, ours = (exec_and_wait(client, arguments) for client in clients.values())
    assert ours == theirs


def test_exec_status_of_an_unknown_pid(clients: dict[str, SocketClient]) -> None:
    theirs, ours = both(clients, "guest-exec-status", pid=1)
    assert ours == theirs == {"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}


def test_capture_modes_beyond_qemu_ga_72(clients: dict[str, SocketClient]) -> None:
    """qemu-ga 7.2 takes only a bool; the modes came with later QEMU (and our schema)."""
    arguments = {"path": "/bin/echo", "arg": ["x"], "capture-output": "separated"}
    theirs = exec_and_wait(clients["qemu-ga"], arguments)
    ours = exec_and_wait(clients["trio-qga"], arguments)
    assert theirs["error"]["desc"] == (
        "Invalid parameter type for 'capture-output', expected: boolean"
    )
    assert ours["return"]["out-data"] == base64.b64encode(b"x\n").decode()


def test_authorized_keys_of_a_user_without_them(clients: dict[str, SocketClient]) -> None:
    home = Path("/root")
    if (home / ".ssh" / "authorized_keys").exists():
        pytest.skip("root has an authorized_keys file here: the texts would differ by content")
    theirs, ours = both(clients, "guest-ssh-get-authorized-keys", username="root")
    assert ours == theirs


def test_authorized_keys_of_an_unknown_user(clients: dict[str, SocketClient]) -> None:
    theirs, ours = both(clients, "guest-ssh-get-authorized-keys", username="nosuchuser9")
    # Same class and prefix; qemu-ga says "Success" (errno 0 from getpwnam_r).
    assert theirs["error"]["desc"] == "failed to lookup user 'nosuchuser9': Success"
    assert ours["error"]["desc"] == "failed to lookup user 'nosuchuser9': no such user"


def _by(key: str, items: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {item[key]: item for item in items}


def test_vcpus_match(clients: dict[str, SocketClient]) -> None:
    theirs, ours = both(clients, "guest-get-vcpus")
    assert _by("logical-id", ours["return"]) == _by("logical-id", theirs["return"])


def test_memory_blocks_match(clients: dict[str, SocketClient]) -> None:
    theirs, ours = both(clients, "guest-get-memory-blocks")
    if "error" in theirs:
        assert ours == theirs
    else:
        assert _by("phys-index", ours["return"]) == _by("phys-index", theirs["return"])
    theirs, ours = both(clients, "guest-get-memory-block-info")
    assert ours == theirs
