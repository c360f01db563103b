"""The examples of the README and ``docs/`` run, and print what they say.

Each Python and shell block that ``tests/test_docs.py`` finds runnable runs here, in
the test's directory: a Python block with this interpreter, a shell block with
bash, ``.venv/bin/`` meaning this interpreter's directory. A block noted ``run with
an agent on /tmp/qga.sock`` gets a trio-qga serving a socket in the test's
directory instead. What a block claims to print is compared with what it prints:
the ``# comment`` after each ``print(...)`` of a Python block, and a text block
noted ``output`` right after the block. A block noted ``run as a pytest module``
runs as the tests of a project with nothing of this suite's configuration. The
README's two commands are checked last.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import markdown
from tests.support.clients import SocketClient
from tests.support.markdown import ROOT, Block
from tests.support.processes import running_agent, spawn_agent, stop, wait_for_socket

pytestmark = pytest.mark.slow

RUN = markdown.blocks_to_run()
PYTEST_MODULES = markdown.blocks_noted(markdown.PYTEST_MODULE)

# A claim after a print: ``print(value)  # what it prints``.
CLAIM = re.compile(r"^\s*print\(.*\)\s+# (?P<claim>.+)$")
VENV_BIN = Path(sys.executable).parent  # what `.venv/bin/` in a block means here
SOCKET = "/tmp/qga.sock"  # in a block noted WITH_AGENT: the agent's socket


def where(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[Path]:
    """trio-qga serving a unix socket, its files in the test's directory."""
    workdir = tmp_path / "agent"
    workdir.mkdir()
    with running_agent(workdir) as (_, sock):
        yield sock


@pytest.mark.parametrize("block", RUN, ids=where(RUN))
def test_a_block_prints_what_the_document_says(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    text = block.text.replace(".venv/bin/", f"{VENV_BIN}/")
    if block.note == markdown.WITH_AGENT:
        assert SOCKET in text, f"{block.where}: noted to run with an agent, names no {SOCKET}"
        text = text.replace(SOCKET, str(request.getfixturevalue("agent_socket")))
    else:
        assert SOCKET not in text, f"{block.where}: needs '<!-- {markdown.WITH_AGENT} -->'"
    argv = [sys.executable, "-c", text] if block.language == "python" else ["bash", "-c", text]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}{done.stderr}"
    claimed = claims(block)
    if claimed is not None:
        assert done.stdout.splitlines() == claimed, f"{block.where}: not what it says it prints"
    following = markdown.next_block(block)
    if following is not None and following.note == markdown.OUTPUT:
        assert done.stdout == following.text, f"{block.where}: not the output shown after it"


def claims(block: Block) -> list[str] | None:
    """What a Python block says it prints, line by line; None if it prints nothing."""
    if block.language != "python":
        return None
    prints = [line for line in block.text.splitlines() if re.match(r"^\s*print\(", line)]
    if not prints:
        return None
    said = [CLAIM.match(line) for line in prints]
    assert all(said), f"{block.where}: every print says what it prints, in a comment"
    return [match["claim"] for match in said if match]


@pytest.mark.parametrize("block", PYTEST_MODULES, ids=where(PYTEST_MODULES))
def test_a_pytest_example_passes_in_another_project(block: Block, tmp_path: Path) -> None:
    """Where nothing of this suite's configuration applies, as in a user's project:
    the fixtures come from the installed package's ``pytest11`` entry point."""
    (tmp_path / "test_example.py").write_text(block.text)
    tests = len(re.findall(r"^(?:async )?def test_", block.text, re.M))
    options = ["-q", "-p", "no:cacheprovider", "-W", "error", "-o", "trio_mode=true"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *options, "test_example.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{block.where}:\n{done.stdout}{done.stderr}"
    assert f"{tests} passed" in done.stdout


def test_the_readme_s_two_commands_serve_and_test(tmp_path: Path) -> None:
    """The README's first command, after ``scripts/setup``, serves on the socket it
    names, with the pid file and state directory it names; its second is what CI
    runs. Their ``/tmp`` is the test's directory, which keeps the agent's plugin
    record too."""
    readme = markdown.documents()[ROOT / "README.md"]
    first, second = (block.text.strip() for block in readme.blocks[:2])
    setup, _, serve = first.partition(" && ")
    assert setup == "scripts/setup"
    assert (ROOT / setup).is_file()
    program, *options = shlex.split(re.sub(r"/tmp(?=/|\s|$)", str(tmp_path), serve))
    assert program == ".venv/bin/trio-qga"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["trio-qga"] == "agent.daemon.cli:main"  # what python -m agent runs
    proc = spawn_agent(None, *options, "--cache-dir", str(tmp_path / "cache"))
    try:
        wait_for_socket(tmp_path / "qga.sock", proc)
        client = SocketClient(tmp_path / "qga.sock")
        assert client.execute("guest-ping") == {"return": {}}
        client.close()
        assert (tmp_path / "trio-qga.pid").read_text().strip() == str(proc.pid)
    finally:
        assert stop(proc) == 0
    assert not (tmp_path / "qga.sock").exists()
    assert second == "scripts/test"
    # CI runs it, with a -m selection where KVM is missing (.ci/run says why).
    ci_commands = [line.split() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ["scripts/test"] in ci_commands
