"""qemu-ga's configuration file (``-c``, ``$QGA_CONF``), ``-D`` and ``-b/-a help``."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from agent.core.config import AgentConfig
from agent.daemon.cli import main
from agent.daemon.conffile import ConfigFileError, config_file, dump, load
from tests.support.clients import SocketClient
from tests.support.processes import run_agent, running_agent
from tests.support.reference import qemu_ga_binary

pytestmark = pytest.mark.slow


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qemu-ga.conf"
    path.write_text(text)
    return path


def test_every_key_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# a comment\n"
        "[general]\n"
        "daemon=true\n"
        "method=isa-serial\n"
        "path=/dev/ttyS1\n"
        "logfile=/var/log/qga.log\n"
        "pidfile=/run/qga.pid\n"
        "fsfreeze-hook=/etc/qemu/fsfreeze-hook\n"
        "statedir=/var/lib/qga\n"
        "verbose=1\n"
        "retry-path=false\n"
        "block-rpcs=guest-exec,guest-file-open\n"
        "allow-rpcs=guest-ping;guest-info\n"
        "fs-timeout=2.5\n"
        "cache-dir=/var/cache/elsewhere\n"
        "transports=vsock-listen:-1:1234,unix-listen:/run/qga.sock\n"
        "[other]\n"
        "method=ignored\n",
    )
    assert load(str(path), required=True) == {
        "daemonize": True,
        "method": "isa-serial",
        "path": "/dev/ttyS1",
        "logfile": "/var/log/qga.log",
        "pidfile": "/run/qga.pid",
        "fsfreeze_hook": "/etc/qemu/fsfreeze-hook",
        "statedir": "/var/lib/qga",
        "verbose": True,
        "retry_path": False,
        "blocked_rpcs": ("guest-exec", "guest-file-open"),
        "allowed_rpcs": ("guest-ping", "guest-info"),
        "fs_timeout": 2.5,
        "cache_dir": "/var/cache/elsewhere",
        "transports": ("vsock-listen:-1:1234", "unix-listen:/run/qga.sock"),
    }


def test_glib_key_file_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\n"
        "  method = unix-listen\n"  # leading blanks and blanks around '=' do not count
        "path=\\s/tmp/with\\tescapes\\\\\n"
        "Verbose=true\n"  # keys are case-sensitive: not 'verbose'
        "statedir=/first\n"
        "statedir=/second\n",  # the last one wins
    )
    assert load(str(path), required=True) == {
        "method": "unix-listen",
        "path": " /tmp/with\tescapes\\",
        "statedir": "/second",
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[general]\nverbose=yes\n", "key 'verbose' has a value that cannot be interpreted: 'yes'"),
        ("[general]\npath=a\\qb\n", "key 'path' contains an invalid escape sequence: '\\q'"),
        ("pidfile=/x\n", "the file does not start with a group"),
        ("[general]\nfs-timeout=0\n", "key 'fs-timeout' is not a positive number of seconds: '0'"),
        (
            "[general]\nfs-timeout=soon\n",
            "key 'fs-timeout' is not a positive number of seconds: 'soon'",
        ),
        (
            "[general]\njust words\n",
            "line 2 is not a key-value pair, group or comment: 'just words\\n'",
        ),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as caught:
        load(str(path), required=False)
    assert str(caught.value) == f"error loading configuration from path: {path}, {reason}"


def test_the_old_blacklist_key_blocks_too(tmp_path: Path) -> None:
    """qemu-ga's name for block-rpcs before QEMU 6.0, still in files of that time:
    ignoring it would enable what the file blocks."""
    path = write(
        tmp_path,
        "[general]\nblock-rpcs=guest-file-open\nblacklist=guest-exec,guest-exec-status\n",
    )
    assert load(str(path), required=True) == {
        "blocked_rpcs": ("guest-exec", "guest-exec-status", "guest-file-open")
    }
    alone = write(tmp_path, "[general]\nblacklist=guest-exec\n")
    assert load(str(alone), required=True) == {"blocked_rpcs": ("guest-exec",)}
    with pytest.raises(ConfigFileError, match="key 'blacklist' contains an invalid escape"):
        load(str(write(tmp_path, "[general]\nblacklist=guest-\\x\n")), required=True)


def test_which_file(tmp_path: Path) -> None:
    assert config_file("/given.conf", {"QGA_CONF": "/env.conf"}) == ("/given.conf", True)
    assert config_file(None, {"QGA_CONF": "/env.conf"}) == ("/env.conf", False)
    assert config_file(None, {}) == ("/etc/qemu/qemu-ga.conf", False)
    assert load(str(tmp_path / "absent.conf"), required=False) == {}
    with pytest.raises(ConfigFileError, match=r"absent\.conf, No such file or directory"):
        load(str(tmp_path / "absent.conf"), required=True)


def test_dump_reads_back_as_the_same_configuration(tmp_path: Path) -> None:
    config = AgentConfig(
        method="isa-serial",
        path=" /dev/tty\\S1",
        logfile="/tmp/log",
        pidfile="/run/agent.pid",
        daemonize=True,
        verbose=True,
        blocked_rpcs=("guest-exec", "guest-shutdown"),
        allowed_rpcs=("guest-ping",),
        fs_timeout=0.25,
    )
    path = write(tmp_path, dump(config))
    assert dataclasses.replace(AgentConfig(), **load(str(path), required=True)) == config


def test_dump_of_the_commands_defaults_is_qemu_ga_s() -> None:
    assert dump(AgentConfig.command_defaults()) == (
        "[general]\n"
        "daemon=false\n"
        "method=virtio-serial\n"
        "path=/dev/virtio-ports/org.qemu.guest_agent.0\n"
        "pidfile=/var/run/qemu-ga.pid\n"
        "statedir=/var/run\n"
        "verbose=false\n"
        "retry-path=false\n"
        "block-rpcs=\n"
        "allow-rpcs=\n"
        "fs-timeout=10\n"
        "cache-dir=/var/cache/trio-qga\n"
        "transports=\n"
    )


def dump_conf(*args: str, env: dict[str, str] | None = None) -> str:
    result = run_agent(None, *args, "-D", env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_flags_win_over_the_file_and_lists_add_up(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\nmethod=unix-listen\npath=/tmp/file.sock\nverbose=true\n"
        "block-rpcs=guest-exec\nstatedir=/from/file\nfs-timeout=3\ncache-dir=/from/file\n",
    )
    text = dump_conf(
        *("-c", str(path), "-p", "/tmp/flag.sock", "-b", "guest-info", "-r"),
        *("--fs-timeout", "0.5", "--cache-dir", ""),
    )
    assert text.splitlines() == [
        "[general]",
        "daemon=false",
        "method=unix-listen",
        "path=/tmp/flag.sock",
        "pidfile=/var/run/qemu-ga.pid",
        "statedir=/from/file",
        "verbose=true",
        "retry-path=true",
        "block-rpcs=guest-exec,guest-info",
        "allow-rpcs=",
        "fs-timeout=0.5",
        "cache-dir=",
        "transports=",
    ]


def test_transports_of_the_file_and_of_the_flags_add_up(tmp_path: Path) -> None:
    """-m/-p (or method/path) name one transport, as in qemu-ga; the file's
    ``transports`` and each ``--transport`` more."""
    path = write(
        tmp_path,
        "[general]\nmethod=isa-serial\npath=/dev/ttyS1\ntransports=unix-listen:/run/a.sock\n",
    )
    lines = dump_conf("-c", str(path), "--transport", "vsock-listen:-1:1234").splitlines()
    assert "method=isa-serial" in lines
    assert "path=/dev/ttyS1" in lines
    assert lines[-1] == "transports=unix-listen:/run/a.sock,vsock-listen:-1:1234"


def test_the_default_transport_only_when_none_is_named(tmp_path: Path) -> None:
    """With --transport alone there is no virtio-serial: qemu-ga's lines show the
    first transport, ``transports`` the others, so that -D reads back the same."""
    text = dump_conf("--transport", "unix-listen:/run/a.sock", "--transport", "vsock-listen:3:9")
    lines = text.splitlines()
    assert "method=unix-listen" in lines
    assert "path=/run/a.sock" in lines
    assert lines[-1] == "transports=vsock-listen:3:9"
    read_back = write(tmp_path, text)
    config = dataclasses.replace(AgentConfig(), **load(str(read_back), required=True))
    assert [(spec.method, spec.path) for spec in config.transport_specs] == [
        ("unix-listen", "/run/a.sock"),
        ("vsock-listen", "3:9"),
    ]
    only_path = dataclasses.replace(AgentConfig(), path="/dev/vport0p1")  # -p alone
    assert [(s.method, s.path) for s in only_path.transport_specs] == [
        ("virtio-serial", "/dev/vport0p1")
    ]
    assert [(s.method, s.path) for s in AgentConfig().transport_specs] == [("virtio-serial", None)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("-m", "unix-listen", "-p", "/run/a.sock", "--transport", "unix-listen:/run/a.sock"),
            "transport unix-listen /run/a.sock is named twice",
        ),
        (
            ("--transport", "virtio-serial", "--transport", "virtio-serial:"),
            "transport virtio-serial /dev/virtio-ports/org.qemu.guest_agent.0 is named twice",
        ),
        (
            ("--transport", "vsock-listen:3:1234", "--transport", "vsock-listen:-1:1234"),
            "transport vsock-listen -1:1234 is named twice (as vsock-listen 3:1234)",
        ),
        (("--transport", "unix-listen"), "method unix-listen needs a path"),
        (("--transport", "pigeon:/x"), "transport method 'pigeon' is not available"),
    ],
)
def test_a_transport_named_twice_or_that_cannot_work_is_refused(
    args: tuple[str, ...], message: str
) -> None:
    result = run_agent(None, *args, "-D")
    assert result.returncode == 1
    assert f"trio-qga: {message}" in result.stderr


def test_qga_conf_names_the_file_and_may_be_absent(tmp_path: Path) -> None:
    path = write(tmp_path, "[general]\nmethod=isa-serial\n")
    assert "method=isa-serial\n" in dump_conf(env={"QGA_CONF": str(path)})
    assert "method=virtio-serial\n" in dump_conf(env={"QGA_CONF": str(tmp_path / "absent")})


def test_a_bad_file_stops_the_agent_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[general]\ndaemon=maybe\n")
    assert main(["-c", str(path)]) == 1
    assert "cannot be interpreted: 'maybe'" in capsys.readouterr().err
    assert main(["-c", str(tmp_path / "absent.conf")]) == 1
    assert "absent.conf, No such file or directory" in capsys.readouterr().err


def test_block_and_allow_help_list_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("-b", "-a"):
        assert main([flag, "help"]) == 0
        names = capsys.readouterr().out.split()
        assert names[:3] == ["guest-sync", "guest-sync-delimited", "guest-ping"]
        assert "guest-info" in names
        assert "guest-x-process-list" in names  # from the example plugin


def test_rpcs_blocked_in_the_file_are_disabled(tmp_path: Path) -> None:
    conf = write(tmp_path, "[general]\nblock-rpcs=guest-info\n")
    with running_agent(tmp_path, "-c", str(conf)) as (_, sock):
        client = SocketClient(sock)
        assert client.execute("guest-info")["error"] == {
            "class": "CommandNotFound",
            "desc": "Command guest-info has been disabled: the command is not allowed",
        }
        assert client.execute("guest-ping") == {"return": {}}
        client.close()


DUMP_CASES = [
    (),
    ("-m", "isa-serial", "-r", "-d", "-v", "-l", "/tmp/x.log"),
    ("-m", "unix-listen", "-p", "/tmp/q.sock", "-f", "/tmp/q.pid", "-t", "/tmp"),
    ("-b", "guest-ping"),
    ("--blacklist=guest-exec",),  # qemu-ga's old name, in RHEL 7's and 8's unit
]


@pytest.mark.qemu_ga
@pytest.mark.parametrize("args", DUMP_CASES)
def test_dump_matches_qemu_ga(args: tuple[str, ...], tmp_path: Path) -> None:
    """The same lines as qemu-ga 7.2's ``-D``, plus ``allow-rpcs``, which it predates,
    and trio-qga's own ``fs-timeout``, ``cache-dir`` and ``transports`` (which
    qemu-ga ignores in a file)."""
    env = {"QGA_CONF": str(tmp_path / "absent.conf")}
    theirs = subprocess.run(
        [qemu_ga_binary(), *args, "-D"], capture_output=True, text=True, env=env, check=True
    ).stdout
    ours = dump_conf(*args, env=env)
    own = ("allow-rpcs=\n", "fs-timeout=10\n", "cache-dir=/var/cache/trio-qga\n", "transports=\n")
    for line in own:
        assert line in ours
        ours = ours.replace(line, "")
    assert ours == theirs


@pytest.mark.qemu_ga
def test_qemu_ga_takes_a_file_with_trio_qga_s_transports(tmp_path: Path) -> None:
    """One file serves both agents: qemu-ga 7.2 (which has no ``-c``: the file
    is $QGA_CONF) ignores ``transports`` and reads the rest as it would without it."""
    general = "[general]\nmethod=unix-listen\npath=/run/a.sock\n"
    with_key = write(tmp_path, general + "transports=vsock-listen:-1:1234;isa-serial:/dev/ttyS1\n")
    without = tmp_path / "without.conf"
    without.write_text(general)

    def qemu_ga_dump(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [qemu_ga_binary(), "-D"], capture_output=True, text=True, env={"QGA_CONF": str(path)}
        )

    theirs = qemu_ga_dump(with_key)
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stderr == ""
    assert theirs.stdout == qemu_ga_dump(without).stdout
    assert "method=unix-listen\npath=/run/a.sock\n" in theirs.stdout
    ours = dump_conf("-c", str(with_key))
    assert ours.endswith("transports=vsock-listen:-1:1234,isa-serial:/dev/ttyS1\n")


def dumped_block_rpcs(dumped: str) -> set[str]:
    [line] = [line for line in dumped.splitlines() if line.startswith("block-rpcs=")]
    return set(line.removeprefix("block-rpcs=").split(","))


@pytest.mark.qemu_ga
def test_the_old_blacklist_key_blocks_as_in_qemu_ga(tmp_path: Path) -> None:
    """qemu-ga 7.2 reads ``blacklist`` (warning that it is deprecated). Its -D lists
    the names in reverse, so they are compared as sets. Given both keys, 7.2 ignores
    ``block-rpcs``; trio-qga blocks the names of both, never fewer than qemu-ga."""
    old = "blacklist=guest-exec,guest-exec-status\n"
    for text, ours in [
        (old, {"guest-exec", "guest-exec-status"}),
        (old + "block-rpcs=guest-info\n", {"guest-exec", "guest-exec-status", "guest-info"}),
    ]:
        env = {"QGA_CONF": str(write(tmp_path, "[general]\n" + text))}
        theirs = subprocess.run(
            [qemu_ga_binary(), "-D"], capture_output=True, text=True, env=env, check=True
        ).stdout
        assert dumped_block_rpcs(theirs) == {"guest-exec", "guest-exec-status"}
        assert dumped_block_rpcs(dump_conf(env=env)) == ours
