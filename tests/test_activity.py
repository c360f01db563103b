"""When the agent counts itself quiet (agent.core.activity): what waits for it
(the rest of the agent's commands) must not run while a host waits on a reply."""

from __future__ import annotations

import functools

import trio
import trio.testing

from agent.core.activity import QUIET_FOR, Activity
from agent.core.registry import HandlerSet
from agent.core.session import serve_session
from agent.models.schema import parse
from tests.support.agents import AgentFactory
from tests.support.clients import StreamClient


async def quiet_after(activity: Activity, nursery: trio.Nursery) -> list[float]:
    """Start a wait for quiet; the list gets its clock time when it returns."""
    returned: list[float] = []

    async def wait() -> None:
        await activity.wait_quiet()
        returned.append(trio.current_time())

    nursery.start_soon(wait)
    await trio.testing.wait_all_tasks_blocked()
    return returned


async def test_nothing_read_for_a_period_is_quiet(autojump_clock: trio.abc.Clock) -> None:
    activity = Activity()
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        returned = await quiet_after(activity, nursery)
    assert returned == [started + QUIET_FOR]


async def test_reads_keep_it_from_being_quiet(autojump_clock: trio.abc.Clock) -> None:
    activity = Activity()
    async with trio.open_nursery() as nursery:
        returned = await quiet_after(activity, nursery)
        for _ in range(10):
            await trio.sleep(QUIET_FOR / 2)
            activity.reads += 1
            assert not returned
        last_read = trio.current_time()
    assert last_read < returned[0] <= last_read + 2 * QUIET_FOR


async def test_a_request_under_way_keeps_it_from_being_quiet(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A request that waits (a long read of a program's output) reads nothing
    more while it waits, and the agent is not quiet for all that."""
    activity = Activity()
    activity.reads += 1
    activity.busy += 1
    async with trio.open_nursery() as nursery:
        returned = await quiet_after(activity, nursery)
        await trio.sleep(QUIET_FOR * 10)
        assert not returned
        activity.busy -= 1
        answered = trio.current_time()
    assert answered < returned[0] <= answered + QUIET_FOR


def test_quiet_since_a_count() -> None:
    activity = Activity()
    assert activity.quiet_since(0)
    activity.reads += 1
    assert not activity.quiet_since(0)
    assert activity.quiet_since(1)
    activity.busy += 1
    assert not activity.quiet_since(1)


SCHEMA = """
{ 'command': 'x-wait' }
{ 'command': 'x-fail' }
"""


def waiting_handlers(release: trio.Event) -> HandlerSet:
    """x-wait, which answers once ``release`` is set; x-fail, a handler's bug."""
    handlers = HandlerSet()

    @handlers.command("x-wait")
    async def x_wait(ctx: object) -> dict[str, object]:
        await release.wait()
        return {}

    @handlers.command("x-fail")
    def x_fail(ctx: object) -> None:
        raise RuntimeError("a bug")

    return handlers


async def test_a_session_counts_its_reads_and_what_is_under_way(
    agent_factory: AgentFactory,
) -> None:
    """A read counts once, however many requests it carries; its requests are
    under way until answered, however they end (an error, a handler's bug, a
    parse error); the first reply is noted as it goes out."""
    release = trio.Event()
    activity = Activity()
    agent = agent_factory(handlers=[waiting_handlers(release)], schema=parse(SCHEMA, "test"))
    async with agent, trio.open_nursery() as nursery:
        client_end, server = trio.testing.memory_stream_pair()
        nursery.start_soon(
            functools.partial(serve_session, server, agent.dispatcher, activity=activity)
        )
        client = StreamClient(client_end)
        await client.send(b'{"execute":"x-fail"}{"execute":"nope"}{"bad json\n')
        replies = [await client.line() for _ in range(3)]
        assert [b'"error"' in reply for reply in replies] == [True, True, True]
        assert (activity.reads, activity.busy, activity.replied.is_set()) == (1, 0, True)
        await client.send(b'{"execute":"x-wait"}\n')
        await trio.testing.wait_all_tasks_blocked()
        assert (activity.reads, activity.busy) == (2, 1)
        release.set()
        assert await client.line() == b'{"return": {}}'
        assert (activity.reads, activity.busy) == (2, 0)
        await client_end.aclose()
