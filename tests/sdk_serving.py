"""The SDK's own Streamable HTTP session manager served on a loopback port, and a handshake-era client of it: what
the pins of `compat` that need a live session (tests/test_compat.py, tests/test_compat_lean.py) serve."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Route

from mcpstore_proxy import compat
from mcpstore_proxy.compat_uvicorn import SignalFreeServer
from tests.support import free_port, wait_until


def listing_server(seen: list[Connection]) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: object) -> types.ListToolsResult:
        seen.append(compat.downstream_connection(ctx))
        return types.ListToolsResult(tools=[])

    return Server("compat", on_list_tools=list_tools)


@asynccontextmanager
async def serving(manager: StreamableHTTPSessionManager) -> AsyncGenerator[str]:
    """The manager behind a real uvicorn on a loopback port, in this event loop."""
    port = free_port()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncGenerator[None]:
        async with manager.run():
            yield

    app = Starlette(routes=[Route("/mcp", endpoint=StreamableHTTPASGIApp(manager))], lifespan=lifespan)
    server = SignalFreeServer(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await wait_until(lambda: server.started, what="uvicorn to start")
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            server.should_exit = True


@asynccontextmanager
async def handshake_client(url: str) -> AsyncGenerator[Client]:
    async with (
        httpx2.AsyncClient() as http,
        Client(streamable_http_client(url, http_client=http, terminate_on_close=False), mode="legacy") as client,
    ):
        yield client
