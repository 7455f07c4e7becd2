"""Ending a session closes its upstream sessions: on DELETE, on idle expiry, on shutdown. No upstream is left.

In process (`running_app`, upstreams in memory; named-session expiry follows a hand-moved clock), but for
shutdown by SIGTERM, which must leave no real process behind.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from tests.conversation import structured
from tests.inprocess import running_app
from tests.raw_session import opened_session
from tests.support import (
    connect,
    fixture_server,
    is_alive,
    running_proxy,
    streamable_http_client,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.anyio

_IDLE_TIMEOUT_SECONDS = 60.0
"""Named sessions expire on the proxy's clock, which the tests move by hand: no test waits this long."""


async def test_delete_of_the_downstream_session_stops_its_upstream_process(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        catalog = proxy.live_upstreams()
        async with connect(proxy.url) as client:
            upstream = structured(await client.call_tool("state_whoami", {}))
            assert proxy.upstreams.is_alive(upstream)
            assert proxy.live_upstreams() == catalog | {upstream}
        # Leaving `connect` sends DELETE.
        await wait_until(lambda: not proxy.upstreams.is_alive(upstream), what="the session's upstream to stop")
        assert proxy.live_upstreams() == catalog


async def test_explicit_key_session_outlives_delete_and_ends_on_idle_expiry(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"state": fixture_server("state")}, session_idle_timeout_seconds=_IDLE_TIMEOUT_SECONDS
    )
    async with running_app(config) as proxy:
        catalog = proxy.live_upstreams()
        async with connect(proxy.url, headers={"X-MCPStore-Session": "long-task"}) as client:
            upstream = structured(await client.call_tool("state_whoami", {}))
        async with connect(proxy.url, headers={"X-MCPStore-Session": "long-task"}) as again:
            # The first client's DELETE is answered by now: the key's upstream served on.
            assert structured(await again.call_tool("state_whoami", {})) == upstream
        assert proxy.upstreams.is_alive(upstream), "an explicit-key session must survive the client's DELETE"
        await proxy.advance_clock(_IDLE_TIMEOUT_SECONDS + 1)
        await wait_until(lambda: not proxy.upstreams.is_alive(upstream), what="the idle explicit-key session to expire")
        assert proxy.live_upstreams() == catalog


async def test_a_client_that_never_deletes_is_cleaned_up_by_idle_expiry(tmp_path: Path) -> None:
    # The client's HTTP session is idled out by the SDK's session manager, on a real-time timer (not the proxy's
    # clock): this test keeps a short real timeout, and checks that the manager's timer is what ended it.
    config = write_config(tmp_path, {"state": fixture_server("state")}, session_idle_timeout_seconds=1.5)
    async with running_app(config) as proxy:
        catalog = proxy.live_upstreams()
        async with (
            httpx2.AsyncClient() as http,
            Client(
                streamable_http_client(proxy.url, http_client=http, terminate_on_close=False), mode="legacy"
            ) as client,
        ):
            upstream = structured(await client.call_tool("state_whoami", {}))
        assert proxy.upstreams.is_alive(upstream)
        await wait_until(
            lambda: not proxy.upstreams.is_alive(upstream), timeout=15, what="the abandoned session to idle out"
        )
        assert proxy.live_upstreams() == catalog
        # The manager logs the idle timeout once the session's serving has unwound, which closes its upstreams
        # first: the line may come just after the upstream is seen gone (and never, had anything else ended it).
        await wait_until(lambda: "idle timeout" in proxy.log, what="the session manager to say its timer ended it")


async def test_ending_a_session_whose_upstream_is_still_starting_stops_it_at_once(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    config = write_config(tmp_path, {"state": fixture_server("state", "--start-gate", str(gate))})
    async with running_app(config) as proxy:
        (gate / "slow").touch()
        async with connect(proxy.url) as client, anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "state_echo", {"text": "never answered"})
            await wait_until(lambda: any(gate.glob("hanging-*")), what="the session's upstream to start hanging")
            tg.cancel_scope.cancel()
        # Leaving `connect` sent DELETE while the upstream was still starting.
        upstream = int(next(gate.glob("hanging-*")).name.removeprefix("hanging-"))
        await wait_until(
            lambda: not proxy.upstreams.is_alive(upstream), timeout=8, what="the still-starting upstream to be stopped"
        )


async def test_shutdown_leaves_no_upstream_process(tmp_path: Path) -> None:
    # Real processes and a real SIGTERM: what must not leak is an operating-system process.
    config = write_config(
        tmp_path, {"state": fixture_server("state"), "shared": fixture_server("shared", session="shared")}
    )
    async with (
        running_proxy(config) as proxy,
        connect(proxy.url) as a,
        connect(proxy.url, headers={"X-MCPStore-Session": "k"}) as b,
    ):
        await a.call_tool("state_whoami", {})
        await b.call_tool("state_whoami", {})
        await a.call_tool("shared_whoami", {})
        every_upstream = proxy.upstream_pids()
        assert len(every_upstream) == 4  # two catalog/shared sessions, two client sessions
        assert await proxy.stop() == 0
    assert not any(is_alive(pid) for pid in every_upstream)


async def test_the_session_of_keyless_2026_requests_is_kept_then_closed_when_idle(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, session_idle_timeout_seconds=60)
    async with running_app(config) as proxy:
        catalog = proxy.live_upstreams()
        async with connect(proxy.url, mode="2026-07-28") as modern:
            await modern.call_tool("state_remember", {"value": "kept"})
            assert structured(await modern.call_tool("state_recall", {})) == ["kept"]
        assert len(proxy.live_upstreams()) == len(catalog) + 1  # one session for both calls, still open
        await proxy.advance_clock(61)
        await wait_until(lambda: proxy.live_upstreams() == catalog, what="the idle session to close")


async def test_a_call_in_flight_past_the_idle_timeout_keeps_its_session_until_the_timeout_after_it_ends(
    tmp_path: Path,
) -> None:
    # A session with no standing stream (which would hold it all along), and a call the lane serves: its idle
    # countdown, the SDK's and the upstream's wait all run on the proxy's event loop, whose clock the test moves.
    config = write_config(tmp_path, {"state": fixture_server("state")}, session_idle_timeout_seconds=30)
    async with opened_session(config, keep_alive=False) as (proxy, _, session), anyio.create_task_group() as tg:
        advance = await proxy.loop_clock()
        answers: list[httpx2.Response] = []

        started = tmp_path / "started"

        async def sleep_upstream() -> None:
            arguments = {"seconds": 40, "started_marker": str(started)}
            answers.append(await session.call_tool(1, "state_sleep", arguments))

        tg.start_soon(sleep_upstream)
        await wait_until(started.exists, what="the upstream to start waiting")
        await advance(35)  # past the timeout, with the call in flight
        await advance(10)  # the upstream's wait is over
        await wait_until(lambda: bool(answers), what="the call to be answered")
        assert answers[0].json()["result"]["content"][0]["text"] == "slept"  # its session was not ended under it
        await advance(25)  # not yet the timeout since the call ended
        assert (await session.call_tool(2, "state_echo", {"text": "still here"})).status_code == 200
        await advance(31)  # the timeout since that call ended
        await wait_until(lambda: "idle timeout" in proxy.log, what="the idle session to end")
        assert (await session.call_tool(3, "state_echo", {"text": "too late"})).status_code == 404
