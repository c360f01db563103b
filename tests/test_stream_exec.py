"""The streaming exec extension and ``run``: live output, stdin, exit status, terminals.

Against the agent in memory (the package's ``qga_client`` fixture), as a process on
a unix socket (memory measured, the CLI driven as a user would), and against the
real qemu-ga, where ``run`` falls back to guest-exec polling.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import select
import signal
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
import trio.testing

from agent import Agent
from agent.core.config import AgentConfig
from agent.host.client import QgaClient
from agent.host.errors import AgentError, CommandNotFound
from agent.host.execution import Chunk, ExecDisabled, Execution
from agent.system.streaming import set_window_size, take_terminal
from tests.support.agents import AgentFactory
from tests.support.exec_programs import DAEMON, kill_daemon
from tests.support.processes import client_command, run_client, running_agent

pytestmark = pytest.mark.slow

PREFIX = "__io.github.trio-qga_"


async def until(execution: Execution, text: bytes) -> bytes:
    """Output of ``execution`` until ``text`` has come (or the program ended)."""
    seen = b""
    with trio.fail_after(20):
        async for chunk in execution:
            seen += chunk.data
            if text in seen:
                break
    return seen


async def until_gone(pid: int) -> None:
    """Until process ``pid`` is no more: killed, then reaped."""
    with trio.fail_after(20):
        while True:
            if not psutil.pid_exists(pid):
                break
            await trio.sleep(0.05)


# ------------------------------------------------------------- in memory --
async def test_lines_reach_the_host_while_the_program_runs(
    qga_client: QgaClient, tmp_path: Path
) -> None:
    # The program waits for a file the test creates only once the first line is in.
    mark = tmp_path / "mark"
    script = f"echo one; while [ ! -e {mark} ]; do sleep 0.01; done; echo two"
    execution = await qga_client.run(["/bin/sh", "-c", script])
    assert await until(execution, b"one\n") == b"one\n"
    mark.touch()
    result = await execution
    assert (result.stdout, result.exitcode) == (b"two\n", 0)


async def test_a_line_every_100_ms_comes_spread_over_time(qga_client: QgaClient) -> None:
    script = "for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done"
    execution = await qga_client.run(["/bin/sh", "-c", script])
    arrivals: list[tuple[float, bytes]] = []
    async for chunk in execution:
        arrivals += [(trio.current_time(), line) for line in chunk.data.splitlines()]
    assert [line for _, line in arrivals] == [b"line %d" % i for i in range(1, 6)]
    # Four sleeps of 0.1 s lie between the first line and the last.
    assert arrivals[-1][0] - arrivals[0][0] >= 0.35


async def test_cat_echoes_stdin_piece_by_piece(qga_client: QgaClient) -> None:
    execution = await qga_client.run(["cat"])
    for piece in (b"first\n", b"second\n", b"\x00\xffbinary\n"):
        await execution.write(piece)
        assert await until(execution, piece) == piece
    await execution.close_stdin()
    assert (await execution).exitcode == 0


async def test_stdin_given_at_the_start_is_all_the_input(qga_client: QgaClient) -> None:
    result = await (await qga_client.run(["/bin/sh", "-c", "wc -c"], stdin=b"x" * 300_000))
    assert (result.stdout.strip(), result.exitcode) == (b"300000", 0)


async def test_stdout_and_stderr_stay_apart(qga_client: QgaClient) -> None:
    execution = await qga_client.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    chunks: list[Chunk] = [chunk async for chunk in execution]
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"out\n"
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"err\n"
    assert (await execution).exitcode == 3


@pytest.mark.parametrize(
    ("script", "exitcode", "signal_number", "shell_status"),
    [
        ("exit 0", 0, None, 0),
        ("exit 7", 7, None, 7),
        ("kill -TERM $$", None, signal.SIGTERM, 128 + signal.SIGTERM),
        ("kill -KILL $$", None, signal.SIGKILL, 128 + signal.SIGKILL),
    ],
)
async def test_exit_codes_and_signals(
    qga_client: QgaClient,
    script: str,
    exitcode: int | None,
    signal_number: int | None,
    shell_status: int,
) -> None:
    result = await (await qga_client.run(["/bin/sh", "-c", script]))
    assert (result.exitcode, result.signal, result.shell_status) == (
        exitcode,
        signal_number,
        shell_status,
    )


async def test_a_signal_reaches_the_program(qga_client: QgaClient) -> None:
    script = "trap 'echo got INT; exit 9' INT; echo ready; while :; do sleep 0.05; done"
    execution = await qga_client.run(["/bin/sh", "-c", script])
    await until(execution, b"ready\n")
    await execution.send_signal(signal.SIGINT)
    result = await execution
    assert (result.stdout, result.exitcode) == (b"got INT\n", 9)


async def test_a_shell_on_a_terminal_has_a_tty_of_the_size_given(qga_client: QgaClient) -> None:
    execution = await qga_client.run(["/bin/sh"], terminal=(33, 101))
    await execution.write(b"tty; stty size; exit 4\n")
    result = await execution
    # The shell's prompt may come before or after the echo of what was typed.
    assert re.search(rb"/dev/pts/\d+\r\n33 101\r\n", result.stdout), result.stdout
    assert result.exitcode == 4


async def test_a_terminal_resize_reaches_the_program(qga_client: QgaClient) -> None:
    script = "trap 'stty size' WINCH; echo ready; while :; do sleep 0.05; done"
    execution = await qga_client.run(["/bin/sh", "-c", script], terminal=(24, 80))
    await until(execution, b"ready")
    await execution.resize(50, 132)
    assert b"50 132" in await until(execution, b"50 132")
    await execution.send_signal(signal.SIGKILL)
    assert (await execution).signal == signal.SIGKILL


async def test_env_and_cwd(qga_client: QgaClient, tmp_path: Path) -> None:
    execution = await qga_client.run(
        ["/bin/sh", "-c", 'echo "$GREETING $(pwd)"; test -n "$PATH"'],
        env=["GREETING=hello"],
        cwd=str(tmp_path),
    )
    result = await execution
    assert (result.stdout, result.exitcode) == (f"hello {tmp_path}\n".encode(), 0)


async def test_env_is_added_to_the_agents_environment(
    qga_client: QgaClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlike guest-exec's ``env``, which replaces the environment as qemu-ga's
    does (tests/test_exec.py): see docs/exec.md."""
    monkeypatch.setenv("TRIO_QGA_INHERITED", "kept")  # the agent runs in this process
    monkeypatch.setenv("TRIO_QGA_REPLACED", "old")
    start = {"path": "/usr/bin/env", "env": ["TRIO_QGA_REPLACED=new", "TRIO_QGA_ADDED=1"]}
    pid = (await qga_client.execute(PREFIX + "exec-start", start))["pid"]
    out = b""
    with trio.fail_after(20):
        while True:
            arguments = {"pid": pid, "out-offset": len(out), "wait": 10}
            reply = await qga_client.execute(PREFIX + "exec-read", arguments)
            out += base64.b64decode(reply["out-data"])
            if reply["exited"]:
                break
    lines = set(out.decode().splitlines())
    assert {"TRIO_QGA_INHERITED=kept", "TRIO_QGA_REPLACED=new", "TRIO_QGA_ADDED=1"} <= lines
    assert "TRIO_QGA_REPLACED=old" not in lines


async def test_a_missing_directory_or_program_is_a_clear_error(
    qga_client: QgaClient, tmp_path: Path
) -> None:
    with pytest.raises(AgentError, match=r"cannot run in .*No such file or directory"):
        await qga_client.run(["/bin/true"], cwd=str(tmp_path / "nowhere"))
    with pytest.raises(AgentError, match="Failed to execute child process"):
        await qga_client.run([str(tmp_path / "nothing")])


async def test_reads_are_repeatable_from_an_offset_and_past_data_is_dropped(
    qga_client: QgaClient,
) -> None:
    start = {"path": "/bin/sh", "arg": ["-c", "echo hi; cat >/dev/null"]}  # ends with stdin
    pid = (await qga_client.execute(PREFIX + "exec-start", start))["pid"]
    read = PREFIX + "exec-read"
    first = await qga_client.execute(read, {"pid": pid, "wait": 10})
    while not first["out-data"]:  # the echo may not have run yet
        first = await qga_client.execute(read, {"pid": pid, "wait": 10})
    again = await qga_client.execute(read, {"pid": pid, "wait": 0})
    assert base64.b64decode(again["out-data"]) == base64.b64decode(first["out-data"]) == b"hi\n"
    with pytest.raises(AgentError, match="invalid out offset 9: the agent holds 0 to 3"):
        await qga_client.execute(read, {"pid": pid, "out-offset": 9})
    await qga_client.execute(PREFIX + "exec-close-stdin", {"pid": pid})
    last = await qga_client.execute(read, {"pid": pid, "out-offset": 3, "wait": 10})
    while not last["exited"]:
        last = await qga_client.execute(read, {"pid": pid, "out-offset": 3, "wait": 10})
    assert last == {"out-data": "", "err-data": "", "exited": True, "exitcode": 0}
    with pytest.raises(AgentError, match="Invalid parameter 'pid'"):  # forgotten once told
        await qga_client.execute(read, {"pid": pid})


async def test_bad_requests_get_clear_errors(qga_client: QgaClient) -> None:
    execution = await qga_client.run(["cat"])
    pid = execution.pid
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("exec-read", {"wait": -1}, "invalid wait -1: it must be 0 or more seconds"),
        ("exec-read", {"err-offset": -1}, "invalid err offset -1: the agent holds 0 to 0"),
        ("exec-resize", {"rows": 1, "cols": 1}, "the program does not run on a terminal"),
        ("exec-signal", {"signal": 0}, "invalid signal 0"),
        ("exec-write", {"data": "!!"}, "Base64 data contains invalid characters"),
    ]
    for command, arguments, error in bad:
        with pytest.raises(AgentError) as raised:
            await qga_client.execute(PREFIX + command, {"pid": pid, **arguments})
        assert raised.value.desc.startswith(error), raised.value.desc
    await execution.close_stdin()
    with pytest.raises(AgentError, match="stdin is closed"):
        await execution.write(b"late")
    assert (await execution).exitcode == 0
    await qga_client.ping()  # and the agent serves on


async def test_guest_exec_status_does_not_know_streaming_pids(qga_client: QgaClient) -> None:
    execution = await qga_client.run(["/bin/sleep", "30"])
    with pytest.raises(AgentError, match="Invalid parameter 'pid'"):
        await qga_client.execute("guest-exec-status", {"pid": execution.pid})
    await execution.send_signal(signal.SIGKILL)
    await execution


async def test_a_daemon_holding_stdout_does_not_hide_the_exit(
    qga_client: QgaClient, tmp_path: Path
) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    pidfile = tmp_path / "daemon.pid"
    started = trio.current_time()
    execution = await qga_client.run(["/bin/sh", "-c", DAEMON.format(pidfile=pidfile)])
    try:
        result = await execution
        assert (result.stdout, result.exitcode) == (b"started\n", 0)
        assert trio.current_time() - started < 15
        with trio.fail_after(10):  # the pipes are closed once the exit is collected
            while True:
                if len(os.listdir("/proc/self/fd")) == fds:
                    break
                await trio.sleep(0.01)
    finally:
        kill_daemon(pidfile)


async def test_the_commands_are_listed_in_guest_info(qga_client: QgaClient) -> None:
    commands = await qga_client.commands()
    for name in ("start", "read", "write", "close-stdin", "resize", "signal"):
        assert commands[f"{PREFIX}exec-{name}"] is True
    assert "guest-exec" in commands


# --------------------------------------------- exec disabled by the filter --
@asynccontextmanager
async def client_of(agent: Agent) -> AsyncIterator[QgaClient]:
    """The host library's client of ``agent`` running, over a memory stream."""
    client_end, agent_end = trio.testing.memory_stream_pair()
    async with agent, trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve, agent_end)
        async with QgaClient(client_end, request_timeout=30) as client:
            await client.resync()
            yield client


def filtered(agent_factory: AgentFactory, *blocked: str) -> Agent:
    return agent_factory(plugins=False, blocked_rpcs=blocked)


async def test_run_starts_without_listing_every_command(agent_factory: AgentFactory) -> None:
    """``run`` asks for the streaming start straight away: no guest-info, so an
    agent whose host only runs programs never finds nor imports its plugins
    (0.28 s of a TCG test VM's first ``run``)."""
    agent = agent_factory(plugins=True)
    async with client_of(agent) as client:
        asked: list[str] = []
        execute = client.execute

        async def recorded(command: str, arguments: dict[str, Any] | None = None) -> Any:
            asked.append(command)
            return await execute(command, arguments)

        client.execute = recorded  # type: ignore[method-assign]
        result = await (await client.run(["/bin/sh", "-c", "echo ran"]))
        assert result.stdout == b"ran\n"
        assert "guest-info" not in asked
        assert asked[0] == PREFIX + "exec-start"
        assert not agent.context.registry.complete_now  # the plugins' load still waits


async def test_run_says_exec_is_disabled_rather_than_falling_back(
    agent_factory: AgentFactory,
) -> None:
    async with client_of(filtered(agent_factory, "guest-exec", "guest-exec-status")) as client:
        with pytest.raises(ExecDisabled) as disabled:
            await client.run(["/bin/true"])
    assert isinstance(disabled.value, CommandNotFound)  # as the agent's reply was before
    assert disabled.value.desc == (
        "exec is disabled on this agent (guest-info shows guest-exec disabled)"
    )


async def test_run_falls_back_to_guest_exec_when_only_the_streaming_exec_is_blocked(
    agent_factory: AgentFactory,
) -> None:
    async with client_of(filtered(agent_factory, PREFIX + "exec-start")) as client:
        execution = await client.run(["/bin/sh", "-c", "echo fell back"])
        assert not execution.streaming
        assert (await execution).stdout == b"fell back\n"


async def test_run_says_exec_is_disabled_when_it_is_disabled_after_guest_info(
    agent_factory: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """guest-info read before a freeze (or a filter) disabled it: the agent's own reason."""
    async with client_of(filtered(agent_factory, "guest-exec")) as client:

        async def all_enabled() -> dict[str, bool]:
            return {PREFIX + "exec-start": True}

        monkeypatch.setattr(client, "commands", all_enabled)
        with pytest.raises(ExecDisabled) as disabled:
            await client.run(["/bin/true"])
    assert disabled.value.desc == (
        f"exec is disabled on this agent (Command {PREFIX}exec-start has been disabled:"
        " the command is not allowed)"
    )


@pytest.fixture
def qga_config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        statedir=str(tmp_path), pidfile=None, mount_table=os.devnull, exec_idle_timeout=0.5
    )


async def test_a_program_nobody_reads_is_killed_and_reaped(
    qga_client: QgaClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agent.system.streaming")
    pid = (await qga_client.execute(PREFIX + "exec-start", {"path": "/bin/sleep", "arg": ["30"]}))[
        "pid"
    ]
    await until_gone(pid)
    assert f"exec {pid}: its output was not read for 0.5 s: killed" in caplog.text
    with pytest.raises(AgentError, match="Invalid parameter 'pid'"):
        await qga_client.execute(PREFIX + "exec-read", {"pid": pid})


# --------------------------------------------------- the agent as a process --
@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[tuple[psutil.Process, Path]]:
    with running_agent(tmp_path) as (proc, sock):
        yield psutil.Process(proc.pid), sock


async def test_a_host_that_stops_reading_does_not_grow_the_agent(
    agent_process: tuple[psutil.Process, Path],
) -> None:
    agent, sock = agent_process
    async with await QgaClient.connect_unix(str(sock)) as client:
        await client.ping()
        before = agent.memory_info().rss
        # 'yes' writes as fast as it can; the host reads once, then not for 3 s.
        execution = await client.run(["yes", "0123456789abcdef" * 64])
        await until(execution, b"\n")
        await trio.sleep(3)
        program = next(p for p in agent.children() if p.pid == execution.pid)
        cpu_then = sum(program.cpu_times()[:2])
        await trio.sleep(1)
        cpu_now = sum(program.cpu_times()[:2])
        grown = agent.memory_info().rss - before
        print(f"\nagent RSS grew {grown / 2**20:.1f} MiB; 'yes' used {cpu_now - cpu_then:.2f} s")
        assert grown < 16 * 2**20  # the cap is 1 MiB per stream; Python's heap moves a bit
        assert cpu_now - cpu_then < 0.1  # blocked on its full pipe
        assert program.status() == psutil.STATUS_SLEEPING
        got = 0
        with trio.fail_after(30):
            async for chunk in execution:  # and it streams again once read
                got += len(chunk.data)
                if got > 4 * 2**20:
                    break
        await execution.send_signal(signal.SIGKILL)
        assert (await execution).signal == signal.SIGKILL


async def test_exec_idle_timeout_option(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    with running_agent(tmp_path, "--exec-idle-timeout", "1", "-l", str(log)) as (_, sock):
        async with await QgaClient.connect_unix(str(sock)) as client:
            start = {"path": "/bin/sleep", "arg": ["30"]}
            pid = (await client.execute(PREFIX + "exec-start", start))["pid"]
            await until_gone(pid)
    assert f"exec {pid}: its output was not read for 1 s: killed" in log.read_text()


def test_cli_run_streams_forwards_stdin_and_exits_with_the_status(
    agent_process: tuple[psutil.Process, Path],
) -> None:
    _, sock = agent_process
    result = run_client(
        sock, "run", "--", "/bin/sh", "-c", "cat; echo err >&2; exit 5", stdin=b"in\n"
    )
    assert (result.returncode, result.stdout, result.stderr) == (5, b"in\n", b"err\n")
    killed = run_client(sock, "run", "--", "/bin/sh", "-c", "kill -TERM $$")
    assert killed.returncode == 128 + signal.SIGTERM
    env = run_client(sock, "run", "--env", "A=1", "--cwd", "/", "--", "/bin/sh", "-c", "echo $A")
    assert env.stdout == b"1\n"


def test_cli_run_t_gives_a_terminal_of_our_size_and_type(
    agent_process: tuple[psutil.Process, Path],
) -> None:
    _, sock = agent_process
    environ = {"COLUMNS": "101", "LINES": "33", "TERM": "vt220"}
    script = 'stty size; echo "$TERM"'
    result = run_client(sock, "run", "-t", "--", "/bin/sh", "-c", script, env=environ)
    assert (result.returncode, result.stdout) == (0, b"33 101\r\nvt220\r\n")


def read_until(fd: int, text: bytes, timeout: float = 30) -> bytes:
    """What the terminal ``fd`` gives until ``text`` has come."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{text!r} never came: {seen!r}"
        if select.select([fd], [], [], left)[0]:
            seen += os.read(fd, 4096)
    return seen


def test_cli_run_t_is_an_interactive_terminal(agent_process: tuple[psutil.Process, Path]) -> None:
    _, sock = agent_process
    master, slave = os.openpty()
    set_window_size(slave, 33, 101)
    saved = termios.tcgetattr(slave)
    try:
        with subprocess.Popen(
            client_command(sock, "run", "-t", "--", "/bin/sh"),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,  # our terminal is the client's, as in a shell
        ) as client:
            try:
                read_until(master, b"# ")  # the guest shell's prompt
                os.write(master, b"tty; stty size\r")
                assert re.search(rb"/dev/pts/\d+\r\n33 101\r\n", read_until(master, b"33 101"))
                set_window_size(master, 50, 132)  # the kernel sends the client SIGWINCH
                for _ in range(30):  # until the resize has reached the guest
                    os.write(master, b"stty size\r")
                    if b"50 132" in read_until(master, b"# "):
                        break
                else:
                    pytest.fail("the new size never reached the guest")
                os.write(master, b"exit 3\r")
                assert client.wait(30) == 3
            finally:
                if client.poll() is None:
                    client.kill()
        assert termios.tcgetattr(slave) == saved  # raw mode undone
    finally:
        os.close(master)
        os.close(slave)


def test_cli_run_reports_an_agent_that_goes_away(tmp_path: Path) -> None:
    command = ["run", "--", "/bin/sh", "-c", "echo started; sleep 30"]
    with (
        running_agent(tmp_path) as (agent, sock),
        subprocess.Popen(
            client_command(sock, *command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as client,
    ):
        assert client.stdout is not None
        assert client.stderr is not None
        assert client.stdout.readline() == b"started\n"
        agent.send_signal(signal.SIGTERM)
        assert client.wait(30) == 1
        assert re.fullmatch(  # seen reading or writing, whichever comes first
            rb"trio-qga-client: (the agent closed the connection|.*: the connection to the"
            rb" agent is broken)\n",
            client.stderr.read(),
        )


def test_cli_forwards_ctrl_c_to_the_program(agent_process: tuple[psutil.Process, Path]) -> None:
    _, sock = agent_process
    script = "trap 'echo got INT; exit 9' INT; echo ready; while :; do sleep 0.05; done"
    with subprocess.Popen(
        client_command(sock, "run", "--", "/bin/sh", "-c", script),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    ) as client:
        try:
            assert client.stdout is not None
            assert client.stdout.readline() == b"ready\n"
            client.send_signal(signal.SIGINT)  # what Ctrl-C does to the client
            assert client.stdout.read() == b"got INT\n"
            assert client.wait(30) == 9
        finally:
            if client.poll() is None:
                client.kill()


def test_cli_gives_up_on_the_third_ctrl_c_and_hangs_up(
    agent_process: tuple[psutil.Process, Path], tmp_path: Path
) -> None:
    _, sock = agent_process
    hung_up = tmp_path / "hung-up"
    script = (
        f"trap 'echo INT' INT; trap 'touch {hung_up}; exit 1' HUP; echo ready;"
        " while :; do sleep 0.05; done"
    )
    with subprocess.Popen(
        client_command(sock, "run", "--", "/bin/sh", "-c", script),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    ) as client:
        assert client.stdout is not None
        assert client.stdout.readline() == b"ready\n"
        for _ in range(2):  # forwarded, and ignored by the program
            client.send_signal(signal.SIGINT)
            assert client.stdout.readline() == b"INT\n"
        client.send_signal(signal.SIGINT)
        assert client.wait(30) == 128 + signal.SIGINT
    deadline = time.monotonic() + 20
    while not hung_up.exists():
        assert time.monotonic() < deadline, "the program never got SIGHUP"
        time.sleep(0.05)


# ------------------------------------------------------ the real qemu-ga --
@pytest.mark.qemu_ga
async def test_run_falls_back_to_guest_exec_against_qemu_ga(qemu_ga_socket: Path) -> None:
    async with await QgaClient.connect_unix(str(qemu_ga_socket), request_timeout=10) as client:
        execution = await client.run(
            ["/bin/sh", "-c", 'cat; echo "$A" >&2; pwd; exit 3'],
            env=["A=1"],
            cwd="/",
            stdin=b"in\n",
        )
        assert not execution.streaming
        result = await execution
        assert (result.stdout, result.stderr, result.exitcode) == (b"in\n/\n", b"1\n", 3)


@pytest.mark.qemu_ga
def test_cli_run_against_qemu_ga_says_the_output_comes_at_the_end(qemu_ga_socket: Path) -> None:
    started = time.monotonic()
    result = run_client(qemu_ga_socket, "run", "--", "/bin/sh", "-c", "cat; exit 4", stdin=b"x")
    assert (result.returncode, result.stdout) == (4, b"x")
    assert b"the output will come when the program has ended" in result.stderr
    assert time.monotonic() - started < 30
    terminal = run_client(qemu_ga_socket, "run", "-t", "--", "/bin/sh")
    assert terminal.returncode == 1
    assert terminal.stderr.endswith(
        b"trio-qga-client: a terminal needs the streaming exec extension of trio-qga\n"
    )
