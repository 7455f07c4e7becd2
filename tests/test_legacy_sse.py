"""The legacy HTTP+SSE transport (GET /sse plus POSTs to /messages/) for older clients, with the same sessions.

The proxy runs in this process (`running_app`) with the fixture upstream in memory.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.conversation import structured
from tests.inprocess import running_app
from tests.support import fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def connect_sse(proxy_port: int, headers: Mapping[str, str] | None = None) -> AsyncGenerator[Client]:
    async with Client(
        sse_client(f"http://127.0.0.1:{proxy_port}/sse", headers=dict(headers or {})), mode="legacy", cache=None
    ) as client:
        yield client


async def test_each_sse_client_keeps_its_own_state_and_it_ends_with_the_stream(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        async with connect_sse(proxy.port) as alice, connect_sse(proxy.port) as bob:
            assert "state_remember" in {t.name for t in (await alice.list_tools()).tools}
            await alice.call_tool("state_remember", {"value": "alice"})
            await bob.call_tool("state_remember", {"value": "bob"})
            await alice.call_tool("state_remember", {"value": "alice again"})
            assert structured(await alice.call_tool("state_recall", {})) == ["alice", "alice again"]
            assert structured(await bob.call_tool("state_recall", {})) == ["bob"]
            alice_upstream = structured(await alice.call_tool("state_whoami", {}))
            bob_upstream = structured(await bob.call_tool("state_whoami", {}))
            assert alice_upstream != bob_upstream
            assert proxy.upstreams.is_alive(alice_upstream)
        await wait_until(
            lambda: not proxy.upstreams.is_alive(alice_upstream),
            what="the SSE session's upstream to stop with the stream",
        )
        await wait_until(
            lambda: not proxy.upstreams.is_alive(bob_upstream), what="bob's upstream to stop with his stream"
        )


async def test_an_explicit_session_header_works_over_sse_across_connections(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    headers = {"X-MCPStore-Session": "legacy-task"}
    async with running_app(config) as proxy:
        async with connect_sse(proxy.port, headers) as first:
            await first.call_tool("state_remember", {"value": "kept"})
            first_upstream = structured(await first.call_tool("state_whoami", {}))
        async with connect_sse(proxy.port, headers) as second:
            assert structured(await second.call_tool("state_recall", {})) == ["kept"]
            assert structured(await second.call_tool("state_whoami", {})) == first_upstream


async def test_an_sse_client_that_disconnects_mid_call_has_the_call_cancelled_upstream(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    headers = {"X-MCPStore-Session": "outlives-the-stream"}  # the upstream session stays: only the call may end
    async with running_app(config) as proxy:
        async with anyio.create_task_group() as tg:

            async def call_then_vanish() -> None:
                async with connect_sse(proxy.port, headers) as client:
                    arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
                    await client.call_tool("state_sleep", arguments)

            tg.start_soon(call_then_vanish)
            await wait_until(started.exists, what="the upstream to start the call")
            tg.cancel_scope.cancel()  # the event stream closes with the call unanswered
        await wait_until(cancelled.exists, what="the upstream to see the cancellation")
        async with connect_sse(proxy.port, headers) as again:
            assert structured(await again.call_tool("state_echo", {"text": "still fine"})) == "still fine"
