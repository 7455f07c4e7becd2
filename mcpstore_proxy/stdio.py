"""The stdio face of the proxy: one downstream client on stdin/stdout, as Claude Desktop launches servers.

The pipe is the client's session: its upstream sessions live until stdin
closes, then every one of them is closed. Only MCP messages go to stdout;
logs and the upstreams' stderr go to stderr.
"""

from __future__ import annotations

import signal

import anyio
from mcp.server.stdio import stdio_server

from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.server import ProxyServer

__all__ = ["serve_stdio"]


async def serve_stdio(settings: ProxySettings) -> None:
    """Start every upstream, then serve one client on stdin/stdout until stdin closes or SIGTERM/SIGINT."""
    async with ProxyEngine(settings) as engine, anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signals, tg.cancel_scope)
        server = ProxyServer(engine, stdio=True)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        tg.cancel_scope.cancel()


async def _cancel_on_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
