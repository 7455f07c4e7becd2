"""Upstreams over Streamable HTTP and SSE: one upstream HTTP session per key, configured headers, re-initialization.

The proxy runs in this process (`running_app`) and reaches its HTTP upstreams over loopback. The stateful
fixture is served over HTTP or SSE by uvicorn on a thread of this process (`serving_fixture`), except where the
test restarts the upstream: there it is a process of its own (`running_fixture_server`), killed and started again.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import uvicorn
from anyio.from_thread import start_blocking_portal
from mcp import MCPError, types
from mcp.types import INVALID_PARAMS

from tests.conversation import structured
from tests.fixtures.stateful_server import build, parse
from tests.inprocess import running_app
from tests.support import connect, fixture_server, free_port, running_fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio


class _ThisProcess:
    """The fixture's host when it serves from a thread of the test process: it must never end the process."""

    @property
    def identity(self) -> int:
        return os.getpid()

    async def crash(self) -> None:
        raise AssertionError("an in-process HTTP fixture cannot crash; use running_fixture_server")


@asynccontextmanager
async def serving_fixture(transport: str) -> AsyncGenerator[str]:
    """The stateful fixture served over `http` or `sse` on a free loopback port from a thread of this process (as
    `running_fixture_server` serves it from a process); yields its MCP URL."""
    port = free_port()
    fixture = build(parse(["--name", "remote"]), _ThisProcess())
    app = fixture.streamable_http_app() if transport == "http" else fixture.sse_app()
    # log_config=None: the test process's logging stays as it is. The thread keeps uvicorn off the signals.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    portal_context = start_blocking_portal(name=f"{transport} fixture")
    portal = portal_context.__enter__()
    try:
        served = portal.start_task_soon(server.serve)

        def is_serving() -> bool:
            if served.done():
                raise AssertionError(f"the {transport} fixture stopped before serving: {served.exception()!r}")
            return server.started

        await wait_until(is_serving, timeout=30, what=f"the {transport} fixture to serve")
        try:
            yield f"http://127.0.0.1:{port}{'/mcp' if transport == 'http' else '/sse'}"
        finally:
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(served.result, 30)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(portal_context.__exit__, None, None, None)


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_each_client_gets_its_own_upstream_http_session(tmp_path: Path, transport: str) -> None:
    async with serving_fixture(transport) as upstream_url:
        config = write_config(tmp_path, {"remote": {"url": upstream_url}})
        async with running_app(config) as proxy, connect(proxy.url) as alice, connect(proxy.url) as bob:
            await alice.call_tool("remote_remember", {"value": "alice"})
            await bob.call_tool("remote_remember", {"value": "bob"})
            await alice.call_tool("remote_remember", {"value": "alice again"})
            assert structured(await alice.call_tool("remote_recall", {})) == ["alice", "alice again"]
            assert structured(await bob.call_tool("remote_recall", {})) == ["bob"]
            # An isolated HTTP upstream needs no instance of its own per session: only the proxy talks to it.
            assert proxy.upstreams.started == []


async def test_shared_http_upstream_serves_everyone_from_one_session(tmp_path: Path) -> None:
    async with serving_fixture("http") as upstream_url:
        config = write_config(tmp_path, {"remote": {"url": upstream_url, "session": "shared"}})
        async with running_app(config) as proxy, connect(proxy.url) as alice, connect(proxy.url) as bob:
            await alice.call_tool("remote_remember", {"value": "alice"})
            assert structured(await bob.call_tool("remote_remember", {"value": "bob"})) == ["alice", "bob"]


async def test_configured_headers_reach_the_upstream_and_the_clients_credentials_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_TOKEN", "operator-secret")
    async with serving_fixture("http") as upstream_url:
        config = write_config(
            tmp_path, {"remote": {"url": upstream_url, "headers": {"X-Upstream-Token": "${UPSTREAM_TOKEN}"}}}
        )
        async with (
            running_app(config) as proxy,
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
        # A process of its own, so that killing it ends the upstream (and its sessions) as a real restart does.
        await first_upstream.enter_async_context(running_fixture_server("http", port=port))
        async with running_app(config) as proxy, connect(proxy.url, logging_callback=on_log) as client:
            await client.call_tool("remote_remember", {"value": "before the restart"})
            await first_upstream.aclose()
            async with running_fixture_server("http", port=port):
                assert structured(await client.call_tool("remote_recall", {})) == []
                assert structured(await client.call_tool("remote_remember", {"value": "after"})) == ["after"]
            assert len(warnings) == 1
            assert warnings[0].level == "warning"
            assert "upstream 'remote' was restarted" in str(warnings[0].data)


async def test_an_unreachable_http_upstream_fails_calls_naming_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"remote": {"url": f"http://127.0.0.1:{free_port()}/mcp"}, "local": fixture_server("local")}
    )
    async with running_app(config) as proxy, connect(proxy.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert not any(name.startswith("remote_") for name in names)
        assert "local_echo" in names
        assert "upstream 'remote' failed to start" in proxy.log
        with pytest.raises(MCPError) as failed:
            await client.call_tool("remote_echo", {"text": "x"})
        assert failed.value.code == INVALID_PARAMS
