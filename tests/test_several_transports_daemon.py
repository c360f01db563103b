"""Several transports in the ``trio-qga`` process (issue 25): a request hung on a FUSE
mount on one transport, the log naming each session's transport, the start and
the stop of an agent whose transports do not all open.

The hung mounts are ``tests/support/hung_mounts.py``'s, in their own mount
namespace; the freeze is of the scratch xfs there. What is asserted is order
and progress (the ping answered while the hung request is pending), never time.
"""

from __future__ import annotations

import base64
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.clients import SocketClient
from tests.support.hung_mounts import HungMounts
from tests.support.processes import eventually, run_agent, spawn_agent, stop, wait_for_socket

pytestmark = pytest.mark.slow

FS_TIMEOUT = 5.0  # long enough for the pings to be answered while a call hangs
PONG: dict[str, object] = {"return": {}}


@contextmanager
def two_socket_agent(
    workdir: Path, *options: str, mounts: HungMounts | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], SocketClient, SocketClient]]:
    """trio-qga on two unix sockets (in the hung mounts' namespace if given), a
    client connected on each; released and stopped with SIGTERM after."""
    first, second = workdir / "first.sock", workdir / "second.sock"
    proc = spawn_agent(
        workdir,
        *("--transport", f"unix-listen:{first}", "--transport", f"unix-listen:{second}"),
        *options,
        wrapper=mounts.command() if mounts else (),
        env=mounts.environment() if mounts else None,
    )
    clients: list[SocketClient] = []
    try:
        wait_for_socket(first, proc)
        wait_for_socket(second, proc)
        clients += [SocketClient(first, timeout=30), SocketClient(second, timeout=30)]
        yield proc, clients[0], clients[1]
    finally:
        for client in clients:
            client.close()
        if mounts is not None:
            mounts.release()  # nothing may stay stuck
        assert stop(proc, 20) == 0


def pending(client: SocketClient) -> bool:
    """No reply has come to ``client`` yet."""
    try:
        client.line(timeout=0.05)
    except TimeoutError:
        return True
    finally:
        client.sock.settimeout(30)
    return False


def waits_on_fuse(pid: int) -> bool:
    """A thread of ``pid`` waits for the FUSE daemon's answer."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text() == "request_wait_answer":
                return True
        except OSError:
            continue
    return False


def test_a_read_hung_on_fuse_leaves_the_other_transport_answering(
    hung_mounts: HungMounts, tmp_path: Path
) -> None:
    data = hung_mounts.blk / "data"  # past the page cache (as in test_hung_fs.py)
    options = ("--mount-table", str(hung_mounts.mount_table), "--fs-timeout", f"{FS_TIMEOUT:g}")
    with two_socket_agent(tmp_path, *options, mounts=hung_mounts) as (_, one, two):
        handle = one.execute("guest-file-open", {"path": str(data)})["return"]
        hung_mounts.hold()
        one.send(b'{"execute":"guest-file-read","arguments":{"handle":%d,"count":100}}\n' % handle)
        for _ in range(5):
            assert two.execute("guest-ping") == PONG
        assert pending(one)  # the pings were answered while the read hangs,
        reply = one.reply()  # as its answer, at the filesystem deadline, says
        assert f"did not answer within {FS_TIMEOUT:g} s" in reply["error"]["desc"]
        assert two.execute("guest-ping") == PONG


def test_a_write_hung_on_fuse_is_waited_for_by_the_other_session_s_freeze(
    hung_mounts: HungMounts, tmp_path: Path
) -> None:
    """The write is in its worker thread, held by FUSE, when the other session
    freezes the scratch xfs: the freeze waits for it, and goes on once it ends."""
    data = hung_mounts.fuse / "data"
    options = ("--mount-table", str(hung_mounts.mount_table), "--fs-timeout", f"{FS_TIMEOUT:g}")
    with two_socket_agent(tmp_path, *options, mounts=hung_mounts) as (proc, one, two):
        handle = one.execute("guest-file-open", {"path": str(data), "mode": "r+"})["return"]
        hung_mounts.hold()
        buffer = base64.b64encode(b"written before the freeze").decode()
        one.send(
            b'{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":"%s"}}\n'
            % (handle, buffer.encode())
        )
        assert eventually(lambda: waits_on_fuse(proc.pid))  # the write is in FUSE's hands
        two.send(
            b'{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["%s"]}}\n'
            % str(hung_mounts.xfs).encode()
        )
        assert pending(two)  # waiting for the write
        assert pending(one)
        hung_mounts.release()
        assert one.reply() == {"return": {"count": 25, "eof": False}}
        assert two.reply() == {"return": 1}
        assert two.execute("guest-fsfreeze-thaw") == {"return": 1}


def test_the_log_names_the_transport_of_each_session(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    with two_socket_agent(tmp_path, "-v", "-l", str(log)) as (_, one, two):
        assert one.execute("guest-ping") == PONG
        assert two.execute("guest-info")["return"]["version"]
    lines = log.read_text().splitlines()
    first = f"[unix-listen {tmp_path / 'first.sock'}]: executing guest-ping"
    second = f"[unix-listen {tmp_path / 'second.sock'}]: executing guest-info"
    assert any(line.endswith(first) for line in lines), lines
    assert any(line.endswith(second) for line in lines), lines


def test_one_transport_that_cannot_open_is_logged_and_sigterm_closes_the_others(
    tmp_path: Path,
) -> None:
    absent = tmp_path / "no-such-port"
    sock = tmp_path / "qga.sock"
    proc = spawn_agent(
        tmp_path,
        *("-m", "virtio-serial", "-p", str(absent), "--transport", f"unix-listen:{sock}"),
    )
    try:
        wait_for_socket(sock, proc)
        client = SocketClient(sock)
        assert client.execute("guest-ping") == PONG
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    finally:
        stop(proc)
    assert f"virtio-serial {absent}: No such file or directory; serving the other" in err
    assert not sock.exists()


def test_when_no_transport_can_open_the_agent_says_why_for_each(tmp_path: Path) -> None:
    first, second = tmp_path / "port-a", tmp_path / "port-b"
    result = run_agent(
        tmp_path,
        *("--transport", f"virtio-serial:{first}", "--transport", f"isa-serial:{second}"),
    )
    assert result.returncode == 1
    assert f"virtio-serial {first}: No such file or directory" in result.stderr
    assert f"isa-serial {second}: No such file or directory" in result.stderr
