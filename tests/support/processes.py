"""trio-qga and trio-qga-client as processes, started as a host or an init system
starts them.

:func:`spawn_agent` is the one way the tests start the agent's command:
:func:`running_agent` serves it on a unix socket for the length of a ``with``,
:func:`run_agent` runs it to its end (a refusal at start, ``-D``, ``-V``, the
launcher of ``-d``). Every such agent runs this tree's code (:func:`environment`)
and, given a work directory, keeps its state, pid file and plugin record there,
never in the machine's ``/run`` or ``/var/cache``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AGENT_COMMAND = [sys.executable, "-m", "agent"]
CLIENT_COMMAND = [sys.executable, "-m", "agent.host.cli"]


def environment(**variables: str) -> dict[str, str]:
    """This process's environment and ``variables``, with this tree first on
    PYTHONPATH: the program a test starts is the code under test, from any directory."""
    env = {**os.environ, **variables}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def agent_command(workdir: Path | None, *options: str) -> list[str]:
    """trio-qga's command line: with ``workdir``, its state directory, pid file and
    plugin record there (``-t``, ``-f``, ``--cache-dir``), then ``options``."""
    if workdir is None:
        return [*AGENT_COMMAND, *options]
    here = ["-t", str(workdir), "-f", str(workdir / "agent.pid")]
    return [*AGENT_COMMAND, *here, "--cache-dir", str(workdir / "cache"), *options]


def spawn_agent(
    workdir: Path | None,
    *options: str,
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """trio-qga started with ``options`` (see :func:`agent_command`), after
    ``wrapper`` (``nsenter ...``, ``systemd-socket-activate ...``), with ``env``
    added to the environment; its stderr piped unless ``popen`` says otherwise."""
    popen.setdefault("stderr", subprocess.PIPE)
    command = [*wrapper, *agent_command(workdir, *options)]
    return subprocess.Popen(command, env=environment(**(env or {})), **popen)


def run_agent(
    workdir: Path | None,
    *options: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """trio-qga run to its end, as :func:`spawn_agent` starts it; its output as text."""
    return subprocess.run(
        agent_command(workdir, *options),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(**(env or {})),
        cwd=cwd,
    )


@contextmanager
def running_agent(
    workdir: Path,
    *options: str,
    socket_name: str = "qga.sock",
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Our agent serving a unix socket in ``workdir``; stopped with SIGTERM after."""
    sock = workdir / socket_name
    proc = spawn_agent(workdir, "--transport", f"unix-listen:{sock}", *options, env=env)
    try:
        wait_for_socket(sock, proc)
        yield proc, sock
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], seconds: float = 10) -> int:
    """SIGTERM to ``proc`` if it still runs; its exit status (killed after ``seconds``)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    status = wait_or_kill(proc, seconds)
    if proc.stderr:
        proc.stderr.close()
    return status


def wait_or_kill(proc: subprocess.Popen[bytes], seconds: float) -> int:
    """The process's exit status; killed if it has not exited within ``seconds``."""
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_for_socket(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"agent exited with {proc.returncode}: {err}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sock} did not appear")
        time.sleep(0.01)


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``condition`` came true within ``seconds`` (polled: for what another
    process does)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def client_command(sock: Path, *args: str) -> list[str]:
    """trio-qga-client's command line, on the agent at ``sock``."""
    return [*CLIENT_COMMAND, "--address", str(sock), *args]


def run_client(
    sock: Path, *args: str, stdin: bytes = b"", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """trio-qga-client run to its end, ``stdin`` as its input."""
    return subprocess.run(
        client_command(sock, *args),
        input=stdin,
        capture_output=True,
        timeout=60,
        env=environment(**(env or {})),
    )
