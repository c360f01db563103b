"""Differential tests of guest-file-*: the same sessions against qemu-ga and ours.

Each agent works in its own scratch directory holding the same files; paths
and handle numbers are normalised before the replies are compared.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import SocketClient

Step = tuple[str, dict[str, Any]]
HELLO = base64.b64encode(b"hello world").decode()


def run_session(sock: Path, root: Path, steps: list[Step]) -> list[str]:
    """Run ``steps``; $ROOT in strings is ``root``, $H the handle of the last open."""
    (root / "hello.txt").write_bytes(b"hello world")
    (root / "bin").write_bytes(bytes(range(256)) * 40)
    client = SocketClient(sock)
    handle = None
    replies = []
    try:
        for name, arguments in steps:
            concrete = {
                key: (value.replace("$ROOT", str(root)) if isinstance(value, str) else value)
                for key, value in arguments.items()
            }
            if concrete.get("handle") == "$H":
                concrete["handle"] = handle
            reply = client.execute(name, concrete)
            if name == "guest-file-open" and "return" in reply:
                handle = reply["return"]
                reply = {"return": "HANDLE"}
            replies.append(_normalise(reply, root, handle))
    finally:
        client.close()
    return replies


def _normalise(reply: dict[str, Any], root: Path, handle: int | None) -> str:
    text = json.dumps(reply, sort_keys=True).replace(str(root), "$ROOT")
    return re.sub(r"handle '\d+'", "handle 'N'", text)


SESSIONS: dict[str, list[Step]] = {
    "read in pieces, eof as qemu-ga": [
        ("guest-file-open", {"path": "$ROOT/hello.txt"}),
        ("guest-file-read", {"handle": "$H", "count": 5}),
        ("guest-file-read", {"handle": "$H", "count": 6}),
        ("guest-file-read", {"handle": "$H", "count": 6}),
        ("guest-file-read", {"handle": "$H", "count": 0}),
        ("guest-file-seek", {"handle": "$H", "offset": 0, "whence": "set"}),
        ("guest-file-read", {"handle": "$H", "count": 11}),
        ("guest-file-read", {"handle": "$H"}),
        ("guest-file-seek", {"handle": "$H", "offset": 2, "whence": 0}),
        ("guest-file-read", {"handle": "$H", "count": 100}),
        ("guest-file-close", {"handle": "$H"}),
        ("guest-file-close", {"handle": "$H"}),
        ("guest-file-read", {"handle": "$H"}),
    ],
    "binary read": [
        ("guest-file-open", {"path": "$ROOT/bin", "mode": "rb"}),
        ("guest-file-read", {"handle": "$H", "count": 10240}),
        ("guest-file-read", {"handle": "$H", "count": 1}),
        ("guest-file-close", {"handle": "$H"}),
    ],
    "write, seek, read back": [
        ("guest-file-open", {"path": "$ROOT/new.txt", "mode": "w+"}),
        ("guest-file-write", {"handle": "$H", "buf-b64": HELLO}),
        ("guest-file-write", {"handle": "$H", "buf-b64": HELLO, "count": 3}),
        ("guest-file-write", {"handle": "$H", "buf-b64": ""}),
        ("guest-file-flush", {"handle": "$H"}),
        ("guest-file-seek", {"handle": "$H", "offset": -4, "whence": "cur"}),
        ("guest-file-read", {"handle": "$H", "count": 100}),
        ("guest-file-seek", {"handle": "$H", "offset": 0, "whence": 2}),
        ("guest-file-seek", {"handle": "$H", "offset": 10, "whence": "end"}),
        ("guest-file-close", {"handle": "$H"}),
    ],
    "append": [
        ("guest-file-open", {"path": "$ROOT/hello.txt", "mode": "a"}),
        ("guest-file-write", {"handle": "$H", "buf-b64": HELLO}),
        ("guest-file-read", {"handle": "$H"}),
        ("guest-file-close", {"handle": "$H"}),
        ("guest-file-open", {"path": "$ROOT/hello.txt", "mode": "r"}),
        ("guest-file-read", {"handle": "$H", "count": 50}),
    ],
    "errors": [
        ("guest-file-open", {"path": "$ROOT/missing", "mode": "r"}),
        ("guest-file-open", {"path": "$ROOT/hello.txt", "mode": "rw"}),
        ("guest-file-open", {"path": "$ROOT/hello.txt", "mode": "r+b"}),
        ("guest-file-read", {"handle": "$H", "count": -1}),
        ("guest-file-read", {"handle": "$H", "count": 48 * 1024 * 1024 + 1}),
        ("guest-file-write", {"handle": "$H", "buf-b64": HELLO, "count": 12}),
        ("guest-file-write", {"handle": "$H", "buf-b64": HELLO, "count": -1}),
        ("guest-file-write", {"handle": "$H", "buf-b64": "not base64!"}),
        ("guest-file-seek", {"handle": "$H", "offset": -100, "whence": "set"}),
        ("guest-file-seek", {"handle": "$H", "offset": 0, "whence": 7}),
        ("guest-file-seek", {"handle": "$H", "offset": 0, "whence": "middle"}),
        ("guest-file-read", {"handle": 999999}),
        ("guest-file-open", {"path": "$ROOT/hello.txt"}),
        ("guest-file-write", {"handle": "$H", "buf-b64": HELLO}),
        ("guest-file-open", {"path": 5}),
        ("guest-file-open", {}),
        ("guest-file-read", {"handle": "x"}),
    ],
}


@pytest.mark.qemu_ga
@pytest.mark.parametrize("session", SESSIONS)
def test_same_file_sessions_as_qemu_ga(
    qemu_ga_socket: Path, our_socket: Path, tmp_path: Path, session: str
) -> None:
    ours_root, theirs_root = tmp_path / "ours", tmp_path / "theirs"
    ours_root.mkdir()
    theirs_root.mkdir()
    steps = SESSIONS[session]
    ours = run_session(our_socket, ours_root, steps)
    theirs = run_session(qemu_ga_socket, theirs_root, steps)
    assert ours == theirs
    for name in ("hello.txt", "bin", "new.txt"):
        if (theirs_root / name).exists():
            assert (ours_root / name).read_bytes() == (theirs_root / name).read_bytes()


@pytest.mark.qemu_ga
def test_where_ours_deliberately_differs(
    qemu_ga_socket: Path, our_socket: Path, tmp_path: Path
) -> None:
    """qemu-ga opens directories, half-decodes unpadded base64 and mangles NUL paths."""
    steps: list[Step] = [
        ("guest-file-open", {"path": "$ROOT"}),
        ("guest-file-open", {"path": "$ROOT/w", "mode": "w"}),
        ("guest-file-write", {"handle": "$H", "buf-b64": "aGVsbG8"}),
    ]
    for root in (tmp_path / "ours", tmp_path / "theirs"):
        root.mkdir()
    ours = run_session(our_socket, tmp_path / "ours", steps)
    theirs = run_session(qemu_ga_socket, tmp_path / "theirs", steps)
    assert json.loads(theirs[0]) == {"return": "HANDLE"}
    assert json.loads(ours[0])["error"]["desc"] == (
        "failed to open file '$ROOT' (mode: 'r'): Is a directory"
    )
    assert json.loads(theirs[2]) == {"return": {"count": 3, "eof": False}}  # "hel": half of it
    assert "malformed" in ours[2]
    assert (tmp_path / "ours" / "w").read_bytes() == b""
