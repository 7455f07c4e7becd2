"""Upstreams over Streamable HTTP and SSE: one upstream HTTP session per key, configured headers, re-initialization."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from mcp import MCPError, types

from tests.support import (
    connect,
    fixture_server,
    free_port,
    running_fixture_server,
    running_proxy,
    structured,
    write_config,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_each_client_gets_its_own_upstream_http_session(tmp_path: Path, transport: str) -> None:
    async with running_fixture_server(transport) as upstream_url:
        config = write_config(tmp_path, {"remote": {"url": upstream_url}})
        async with running_proxy(config) as proxy, connect(proxy.url) as alice, connect(proxy.url) as bob:
            await alice.call_tool("remote_remember", {"value": "alice"})
            await bob.call_tool("remote_remember", {"value": "bob"})
            await alice.call_tool("remote_remember", {"value": "alice again"})
            assert structured(await alice.call_tool("remote_recall", {})) == ["alice", "alice again"]
            assert structured(await bob.call_tool("remote_recall", {})) == ["bob"]
            # An isolated HTTP upstream needs no extra process: only the proxy talks to it.
            assert proxy.upstream_pids() == set()


async def test_shared_http_upstream_serves_everyone_from_one_session(tmp_path: Path) -> None:
    async with running_fixture_server("http") as upstream_url:
        config = write_config(tmp_path, {"remote": {"url": upstream_url, "session": "shared"}})
        async with running_proxy(config) as proxy, connect(proxy.url) as alice, connect(proxy.url) as bob:
            await alice.call_tool("remote_remember", {"value": "alice"})
            assert structured(await bob.call_tool("remote_remember", {"value": "bob"})) == ["alice", "bob"]


async def test_configured_headers_reach_the_upstream_and_the_clients_credentials_do_not(tmp_path: Path) -> None:
    async with running_fixture_server("http") as upstream_url:
        config = write_config(
            tmp_path, {"remote": {"url": upstream_url, "headers": {"X-Upstream-Token": "${UPSTREAM_TOKEN}"}}}
        )
        async with (
            running_proxy(config, env={"UPSTREAM_TOKEN": "operator-secret"}) as proxy,
            connect(proxy.url, headers={"Authorization": "Bearer client-secret"}) as client,
        ):
            token = await client.call_tool("remote_header", {"name": "X-Upstream-Token"})
            assert structured(token) == "operator-secret"
            assert structured(await client.call_tool("remote_header", {"name": "Authorization"})) == ""


async def test_an_http_upstream_that_restarted_is_reinitialized_and_the_client_warned(tmp_path: Path) -> None:
    warnings: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        warnings.append(params)

    port = free_port()
    config = write_config(tmp_path, {"remote": {"url": f"http://127.0.0.1:{port}/mcp"}})
    async with AsyncExitStack() as first_upstream:
        await first_upstream.enter_async_context(running_fixture_server("http", port=port))
        async with running_proxy(config) as proxy, connect(proxy.url, logging_callback=on_log) as client:
            await client.call_tool("remote_remember", {"value": "before the restart"})
            await first_upstream.aclose()
            async with running_fixture_server("http", port=port):
                assert structured(await client.call_tool("remote_recall", {})) == []
                assert structured(await client.call_tool("remote_remember", {"value": "after"})) == ["after"]
            assert len(warnings) == 1
            assert "upstream 'remote' was restarted" in str(warnings[0].data)


async def test_an_unreachable_http_upstream_fails_calls_naming_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"remote": {"url": f"http://127.0.0.1:{free_port()}/mcp"}, "local": fixture_server("local")}
    )
    async with running_proxy(config) as proxy, connect(proxy.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert not any(name.startswith("remote_") for name in names)
        assert "upstream 'remote' failed to start" in proxy.log
        with pytest.raises(MCPError):
            await client.call_tool("remote_echo", {"text": "x"})
