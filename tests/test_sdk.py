"""The SDK (MCPStore's session API), run in both modes: embedded in this process, and against a running proxy.

Both modes run in this process with the upstreams in memory (`tests.inprocess.sdk_store`): whoami answers an
instance's identity, and named-session expiry follows a clock the test moves. The tests are async only so
that they can host the proxy; the SDK calls in them are the sync API, which (as in Jupyter) must work inside a
running event loop.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcpstore_proxy import (
    AmbiguousToolError,
    MCPStore,
    SessionClosedError,
    UnknownServiceError,
    UnknownToolError,
    UpstreamError,
    UpstreamStartError,
)
from tests.conversation import structured
from tests.inprocess import SdkHarness, running_app, sdk_store
from tests.support import fixture_server, free_port, wait_until, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
async def harness(tmp_path: Path, mode: str) -> AsyncGenerator[SdkHarness]:
    config = write_config(
        tmp_path,
        {"state": fixture_server("state"), "shared": fixture_server("shared", session="shared")},
        allow_stdio_services_via_api=True,
    )
    async with sdk_store(config, mode) as opened:
        yield opened


@pytest.fixture
def store(harness: SdkHarness) -> MCPStore:
    return harness.store


def identity_of(session: Any) -> int:
    """The identity of the upstream instance that serves `session` (whoami)."""
    return int(structured(session.use_tool("whoami")))


async def test_a_created_session_keeps_state_until_close_session_stops_its_process(harness: SdkHarness) -> None:
    session = harness.store.for_store().create_session("notes")
    session.bind_service("state")
    session.use_tool("remember", {"value": "one"})
    session.use_tool("state_remember", {"value": "two"})  # the prefixed name works too
    assert structured(session.use_tool("recall")) == ["one", "two"]
    assert session.is_active
    assert session.service_count == 1
    assert session.list_services() == ["state"]
    identity = identity_of(session)
    assert harness.is_alive(identity)
    session.close_session()
    assert not session.is_active
    await wait_until(lambda: not harness.is_alive(identity), what="the closed session's upstream to stop")


async def test_with_session_holds_state_for_the_block_and_closes_after_it(harness: SdkHarness) -> None:
    context = harness.store.for_store()
    with context.with_session("browser_task") as session:
        session.bind_service("state")
        session.use_tool("remember", {"value": "kept"})
        # Scope-level calls run in the block's session.
        assert structured(context.use_tool("recall")) == ["kept"]
        identity = identity_of(session)
        assert harness.is_alive(identity)
    assert context.find_session("browser_task") is None
    await wait_until(lambda: not harness.is_alive(identity), what="the block's session to stop its upstream")
    assert structured(context.use_tool("state_recall")) == []  # outside any session: a one-off session


async def test_with_session_async_works_as_documented(store: MCPStore) -> None:
    context = store.for_store()
    async with context.with_session_async("async_task") as session:
        await session.bind_service_async("state")
        await session.use_tool_async("remember", {"value": "async"})
        assert structured(await context.use_tool_async("recall")) == ["async"]
        info = await session.session_info_async()
        assert info.bound_services == ["state"]
    assert await context.find_session_async("async_task") is None


async def test_session_auto_reuses_one_session_until_session_manual(store: MCPStore) -> None:
    context = store.for_store()
    context.session_auto()
    context.use_tool("state_remember", {"value": "auto 1"})
    context.use_tool("state_remember", {"value": "auto 2"})
    assert structured(context.use_tool("state_recall")) == ["auto 1", "auto 2"]
    context.session_manual()
    assert structured(context.use_tool("state_recall")) == []
    context.session_auto()
    assert structured(context.use_tool("state_recall")) == ["auto 1", "auto 2"]
    context.auto_session().close_session()
    # Closed (or expired), the automatic session opens afresh on the next call instead of failing.
    assert structured(context.use_tool("state_recall")) == []
    context.auto_session().close_session()
    context.session_manual()


async def test_agents_have_their_own_sessions_and_their_own_services(store: MCPStore) -> None:
    team_1, team_2 = store.for_agent("team_1"), store.for_agent("team_2")
    with team_1.with_session("task") as first, team_2.with_session("task") as second:
        first.use_tool("state_remember", {"value": "team 1"})
        assert structured(second.use_tool("state_recall")) == []
        assert structured(first.use_tool("state_recall")) == ["team 1"]

    team_1.add_service(fixture_server("private"), name="private")
    team_1.wait_service("private", timeout=60)
    assert "private" in {service.name for service in team_1.list_services()}
    assert "private" not in {service.name for service in team_2.list_services()}
    assert "private" not in {service.name for service in store.for_store().list_services()}
    assert "private_echo" in {tool.name for tool in team_1.list_tools()}
    with pytest.raises(UnknownToolError):
        team_2.use_tool("private_echo", {"text": "not mine"})
    with pytest.raises(UnknownServiceError):
        team_2.service_status("private")
    team_1.remove_service("private")


async def test_two_threads_in_two_sessions_interleave_without_crossing(store: MCPStore) -> None:
    context = store.for_store()
    barrier = threading.Barrier(2, timeout=60)
    seen: dict[str, list[str]] = {}
    failures: list[Exception] = []

    def work(name: str) -> None:
        try:
            with context.with_session(name) as session:
                session.bind_service("state")
                for step in range(3):
                    barrier.wait()  # both threads are inside their sessions at every step
                    context.use_tool("remember", {"value": f"{name} {step}"})
                barrier.wait()
                seen[name] = structured(context.use_tool("recall"))
        except Exception as error:  # noqa: BLE001  # reported by the test thread below
            failures.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    await anyio.to_thread.run_sync(lambda: [thread.join() for thread in threads])
    assert not failures, failures
    assert seen == {"left": ["left 0", "left 1", "left 2"], "right": ["right 0", "right 1", "right 2"]}


class Rendezvous:
    """A one-shot barrier for tasks: nobody passes until every party has arrived."""

    def __init__(self, parties: int) -> None:
        self._waiting = parties
        self._everyone_here = anyio.Event()

    async def wait(self) -> None:
        self._waiting -= 1
        if self._waiting == 0:
            self._everyone_here.set()
        await self._everyone_here.wait()


async def test_two_tasks_in_two_sessions_interleave_without_crossing(store: MCPStore) -> None:
    context = store.for_store()
    seen: dict[str, list[str]] = {}
    steps = [Rendezvous(2) for _ in range(4)]

    async def work(name: str) -> None:
        async with context.with_session_async(name) as session:
            await session.bind_service_async("state")
            for step in range(3):
                await steps[step].wait()  # both tasks are inside their sessions at every step
                await context.use_tool_async("remember", {"value": f"{name} {step}"})
            await steps[3].wait()
            seen[name] = structured(await context.use_tool_async("recall"))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(work, "north")
            tg.start_soon(work, "south")
    assert seen == {"north": ["north 0", "north 1", "north 2"], "south": ["south 0", "south 1", "south 2"]}


async def test_extend_session_moves_the_expiry_by_exactly_the_given_seconds(store: MCPStore) -> None:
    session = store.for_store().create_session("long")
    before = session.session_info().expires_at
    session.extend_session(seconds=1234)
    after = session.session_info().expires_at
    assert (after - before).total_seconds() == pytest.approx(1234, abs=1e-3)
    session.extend_session()
    assert (session.session_info().expires_at - after).total_seconds() == pytest.approx(3600, abs=1e-3)
    session.close_session()


async def test_an_expired_session_closes_its_upstream_and_an_extended_one_lives_on(tmp_path: Path, mode: str) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, session_idle_timeout_seconds=2)
    async with sdk_store(config, mode) as harness:
        context = harness.store.for_store()
        short, extended = context.create_session("short"), context.create_session("extended")
        extended.extend_session(60)
        short_identity, extended_identity = identity_of(short), identity_of(extended)
        assert harness.is_alive(short_identity)

        await harness.advance_clock(3)  # past the idle timeout: no real time passes
        await wait_until(lambda: not harness.is_alive(short_identity), what="the idle session's upstream to stop")
        assert context.find_session("short") is None
        with pytest.raises(SessionClosedError, match="'short'"):
            identity_of(short)  # remote: the name is remembered, so the proxy itself refuses the closed session
        assert extended.is_active
        assert harness.is_alive(extended_identity)
        assert identity_of(extended) == extended_identity
        extended.close_session()


async def test_restart_session_gives_fresh_upstream_sessions(harness: SdkHarness) -> None:
    session = harness.store.for_store().create_session("restartable").bind_service("state")
    session.use_tool("remember", {"value": "old"})
    identity = identity_of(session)
    session.restart_session()
    assert session.connection_status() == {"state": "connected"}
    assert structured(session.use_tool("recall")) == []
    assert identity_of(session) != identity
    await wait_until(lambda: not harness.is_alive(identity), what="the restarted session's old upstream to stop")
    session.close_session()


async def test_clear_cache_fetches_the_tool_list_again(store: MCPStore) -> None:
    session = store.for_store().create_session("cached").bind_service("state")
    count = session.tool_count
    assert count > 0
    session.use_tool("grow", {"name": "quiet", "announce": False})
    assert session.tool_count == count  # the upstream did not announce it
    session.clear_cache()
    assert session.tool_count == count + 1
    assert "state_quiet" in {tool.name for tool in session.list_tools()}
    session.close_session()


async def test_connection_status_is_real_and_a_dead_upstream_recovers_on_the_next_call(harness: SdkHarness) -> None:
    session = harness.store.for_store().create_session("fragile").bind_service("state")
    assert session.connection_status() == {"state": "connected"}
    identity = identity_of(session)
    await harness.kill(identity)  # from outside, with no call in flight, as SIGKILL of its process would
    await wait_until(lambda: not harness.is_alive(identity), what="the killed instance to be gone")
    await wait_until(lambda: session.connection_status() == {"state": "disconnected"}, what="the loss to show")
    assert identity_of(session) != identity
    assert session.connection_status() == {"state": "connected"}
    session.close_session()


async def test_list_sessions_and_find_session_see_open_sessions(store: MCPStore) -> None:
    context = store.for_store()
    context.create_session("one")
    context.create_session("two")
    assert {session.session_id for session in context.list_sessions()} >= {"one", "two"}
    found = context.find_session("one")
    assert found is not None
    assert found.session_id == "one"
    for session in context.list_sessions():
        session.close_session()
    assert context.list_sessions() == []


async def test_services_are_added_waited_for_restarted_and_removed(store: MCPStore) -> None:
    context = store.for_store()
    context.add_service({"mcpServers": {"extra": fixture_server("extra", session="shared")}})
    info = context.wait_service("extra", timeout=60)
    assert (info.state, info.session_mode, info.tool_count) == ("ready", "shared", 13)
    context.use_tool("extra_remember", {"value": "before restart"})
    assert structured(context.use_tool("extra_recall")) == ["before restart"]
    assert context.service_status("extra").state == "ready"
    context.restart_service("extra")
    context.wait_service("extra", timeout=60)
    assert structured(context.use_tool("extra_recall")) == []
    context.remove_service("extra")
    assert "extra" not in {service.name for service in context.list_services()}


async def test_errors_name_the_thing_and_come_from_our_hierarchy(store: MCPStore) -> None:
    context = store.for_store()
    with pytest.raises(UnknownServiceError, match="'nope'"):
        context.service_status("nope")
    with pytest.raises(UnknownToolError, match="'no_such_tool'"):
        context.use_tool("no_such_tool")
    with pytest.raises(AmbiguousToolError, match=r"'shared_echo'.*'state_echo'|'state_echo'.*'shared_echo'"):
        context.use_tool("echo", {"text": "which one?"})
    with pytest.raises(SessionClosedError, match="'never-opened'"):
        context.with_session("never-opened").session_info()
    session = context.create_session("broken")
    with pytest.raises(UnknownServiceError):
        session.bind_service("nope")
    session.close_session()
    with pytest.raises(SessionClosedError, match=r"session 'broken' is closed.*create_session"):
        session.use_tool("state_echo", {"text": "too late"})
    context.add_service(name="unreachable", url=f"http://127.0.0.1:{free_port()}/mcp")
    with pytest.raises(UpstreamStartError, match="unreachable"):
        context.wait_service("unreachable", timeout=2)
    with pytest.raises(UpstreamError):
        context.use_tool("state_crash")
    context.remove_service("unreachable")


async def test_langchain_tools_are_bound_to_the_session_they_were_listed_in(store: MCPStore) -> None:
    context = store.for_store()
    with context.with_session("langchain_task") as session:
        session.bind_service("state")
        tools = {tool.name: tool for tool in context.for_langchain().list_tools()}
        remember = tools["state_remember"]
        assert "session_id" not in remember.args
        assert set(remember.args) == {"value"}
        remember.invoke({"value": "from langchain"})
        assert structured(session.use_tool("recall")) == ["from langchain"]
        assert await tools["state_recall"].ainvoke({}) == "from langchain"

    context.session_auto()
    try:
        auto_tools = {tool.name: tool for tool in context.for_langchain().list_tools()}
        auto_tools["state_remember"].invoke({"value": "under session_auto"})
        assert structured(context.use_tool("state_recall")) == ["under session_auto"]
    finally:
        context.auto_session().close_session()
        context.session_manual()


async def test_a_remote_store_follows_a_tool_that_another_client_moved_to_another_service(tmp_path: Path) -> None:
    config = write_config(tmp_path, {}, allow_stdio_services_via_api=True)
    async with running_app(config) as proxy:
        with MCPStore.setup_store(url=proxy.url) as mine, MCPStore.setup_store(url=proxy.url) as theirs:
            mine.for_store().add_service(fixture_server("first"), name="first")
            mine.for_store().wait_service("first", timeout=60)
            assert structured(mine.for_store().use_tool("echo", {"text": "one"})) == "one"  # means first_echo

            theirs.for_store().remove_service("first")
            theirs.for_store().add_service(fixture_server("second"), name="second")
            theirs.for_store().wait_service("second", timeout=60)

            assert structured(mine.for_store().use_tool("echo", {"text": "two"})) == "two"  # now second_echo
