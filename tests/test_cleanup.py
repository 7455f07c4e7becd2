"""Ending a session closes its upstream sessions: on DELETE, on idle expiry, on shutdown. No process is left."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from tests.support import (
    connect,
    fixture_server,
    is_alive,
    running_proxy,
    streamable_http_client,
    structured,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.anyio


async def test_delete_of_the_downstream_session_stops_its_upstream_process(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_proxy(config) as proxy:
        catalog_pids = proxy.upstream_pids()
        async with connect(proxy.url) as client:
            pid = structured(await client.call_tool("state_whoami", {}))
            assert is_alive(pid)
            assert proxy.upstream_pids() == catalog_pids | {pid}
        # Leaving `connect` sends DELETE.
        await wait_until(lambda: not is_alive(pid), what="the session's upstream process to exit")
        assert proxy.upstream_pids() == catalog_pids


async def test_explicit_key_session_outlives_delete_and_ends_on_idle_expiry(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, session_idle_timeout_seconds=1.5)
    async with running_proxy(config) as proxy:
        catalog_pids = proxy.upstream_pids()
        async with connect(proxy.url, headers={"X-MCPStore-Session": "long-task"}) as client:
            pid = structured(await client.call_tool("state_whoami", {}))
        assert is_alive(pid), "an explicit-key session must survive the client's DELETE"
        await wait_until(lambda: not is_alive(pid), timeout=15, what="the idle explicit-key session to expire")
        assert proxy.upstream_pids() == catalog_pids


async def test_a_client_that_never_deletes_is_cleaned_up_by_idle_expiry(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, session_idle_timeout_seconds=1.5)
    async with running_proxy(config) as proxy:
        catalog_pids = proxy.upstream_pids()
        async with (
            httpx2.AsyncClient() as http,
            Client(
                streamable_http_client(proxy.url, http_client=http, terminate_on_close=False), mode="legacy"
            ) as client,
        ):
            pid = structured(await client.call_tool("state_whoami", {}))
        assert is_alive(pid)
        await wait_until(lambda: not is_alive(pid), timeout=15, what="the abandoned session to idle out")
        assert proxy.upstream_pids() == catalog_pids


async def test_ending_a_session_whose_upstream_is_still_starting_stops_it_at_once(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    config = write_config(tmp_path, {"state": fixture_server("state", "--start-gate", str(gate))})
    async with running_proxy(config) as proxy:
        (gate / "slow").touch()
        async with connect(proxy.url) as client:
            with anyio.move_on_after(1):
                await client.call_tool("state_echo", {"text": "never answered"})
            await wait_until(lambda: any(gate.glob("hanging-*")), what="the session's upstream to start hanging")
        # Leaving `connect` sends DELETE while the upstream is still starting.
        pid = int(next(gate.glob("hanging-*")).name.removeprefix("hanging-"))
        await wait_until(lambda: not is_alive(pid), timeout=8, what="the still-starting upstream to be stopped")


async def test_shutdown_leaves_no_upstream_process(tmp_path: Path) -> None:
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


async def test_ephemeral_sessions_serve_one_call_and_leave_nothing_behind(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_proxy(config) as proxy:
        catalog_pids = proxy.upstream_pids()
        async with connect(proxy.url, mode="2026-07-28") as modern:
            await modern.call_tool("state_remember", {"value": "gone"})
            assert structured(await modern.call_tool("state_recall", {})) == []
        await wait_until(lambda: proxy.upstream_pids() == catalog_pids, what="ephemeral sessions to close")
