"""``run`` into a real VM over virtio-serial: output streams while the program runs.

One VM (``../shared/vm/run-in-vm``, TCG when KVM does not work) runs trio-qga
embedded on its virtio-serial port (``vm_agent.py``, one host session). The host
connects before the guest has booted (QEMU holds the bytes) and, in that one
session, streams a program printing a line every 0.5 s, echoes lines through
cat (printing the round trip, a latency figure for docs/benchmarks.md), and collects
exit statuses.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent.host.client import QgaClient
from tests.support.vm import BOOT_TIMEOUT, ROOT, run_in_vm_script, vm_agent_command

pytestmark = pytest.mark.vm

LINES = 5
INTERVAL = 0.5  # seconds between the guest's lines
ECHOES = 20


@pytest.fixture(scope="module")
def vm_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    script = run_in_vm_script()
    work = tmp_path_factory.mktemp("vm-stream")
    sock = work / "qga.sock"
    with open(work / "run-in-vm.out", "wb") as out:
        process = subprocess.Popen(
            vm_agent_command(script, sock),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():  # QEMU creates it a moment after it starts
            assert process.poll() is None, (work / "run-in-vm.out").read_text()
            assert time.monotonic() < deadline, "QEMU never created the socket"
            time.sleep(0.05)
        yield sock
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


async def test_run_streams_from_the_vm_and_returns_the_status(vm_socket: Path) -> None:
    booted = time.monotonic()
    client = await QgaClient.connect_unix(str(vm_socket), request_timeout=BOOT_TIMEOUT)
    client.timeout = 60.0
    print(f"\nfirst reply from the VM after {time.monotonic() - booted:.1f} s")
    async with client:
        script = f"for i in $(seq {LINES}); do echo line $i; sleep {INTERVAL}; done; exit 7"
        execution = await client.run(["/bin/sh", "-c", script])
        assert execution.streaming
        arrivals: list[tuple[float, bytes]] = []
        async for chunk in execution:
            arrivals += [(time.monotonic(), line) for line in chunk.data.splitlines()]
        ended = time.monotonic()
        assert [line for _, line in arrivals] == [b"line %d" % i for i in range(1, LINES + 1)]
        spread = arrivals[-1][0] - arrivals[0][0]
        early = ended - arrivals[0][0]
        print(f"lines spread over {spread:.2f} s; the first came {early:.2f} s before the end")
        assert spread >= (LINES - 1) * INTERVAL * 0.8  # one by one, not at the end
        assert early >= (LINES - 1) * INTERVAL * 0.8
        assert (await execution).shell_status == 7

        cat = await client.run(["cat"])
        round_trips = []
        for number in range(ECHOES):
            line = b"through the port %d\n" % number
            sent = time.monotonic()
            await cat.write(line)
            with trio.fail_after(60):
                echoed = b""
                async for chunk in cat:
                    echoed += chunk.data
                    if echoed.endswith(b"\n"):
                        break
            round_trips.append(time.monotonic() - sent)
            assert echoed == line
        round_trips.sort()
        print(
            f"a line through cat and back: median {statistics.median(round_trips) * 1e3:.0f} ms,"
            f" worst {round_trips[-1] * 1e3:.0f} ms of {ECHOES}"
        )
        await cat.close_stdin()
        assert (await cat).exitcode == 0

        killed = await (await client.run(["/bin/sh", "-c", "kill -TERM $$"]))
        assert killed.shell_status == 128 + 15
