"""``run`` into a real VM over virtio-serial: output streams while the program runs.

The session's VM (``qga_vm``: trio-qga on its virtio-serial port) gets one host
session in which the host streams a program printing a line every 0.5 s,
echoes lines through cat (printing the round trip, a latency figure for
docs/benchmarks.md), and collects exit statuses.
"""

from __future__ import annotations

import statistics
import time

import pytest
import trio

from agent.host.client import QgaClient
from agent.host.vm.background import BackgroundVm

pytestmark = pytest.mark.vm
LINES = 5
INTERVAL = 0.5  # seconds between the guest's lines
ECHOES = 20


async def test_run_streams_from_the_vm_and_returns_the_status(qga_vm: BackgroundVm) -> None:
    client = await QgaClient.connect_unix(str(qga_vm.qga_socket), request_timeout=60)
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
