"""The HTTP face of the proxy, as a Starlette app: Streamable HTTP at `/mcp` (and `/agents/{id}/mcp` for an
agent's view), the legacy HTTP+SSE transport at `/sse` (events) and `/messages/` (posts) for older clients,
the admin API under `/admin` (see `admin`), and `/healthz`.

The SDK's session manager serves `/mcp` with DNS-rebinding protection on: a
request whose Host is not allowed gets 421, a foreign Origin gets 403. Loopback
names are always allowed; `allowed_hosts` / `allowed_origins` in the config add
others (needed when binding to a non-loopback address).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncGenerator, Generator
from contextlib import asynccontextmanager, contextmanager

import anyio
import uvicorn
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from mcpstore_proxy.admin import admin_routes
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.control import Control
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.server import ProxyServer

__all__ = ["create_app", "security_settings", "serve_http"]

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_GRACEFUL_SHUTDOWN_SECONDS = 5


def security_settings(settings: ProxySettings) -> TransportSecuritySettings:
    hosts = [pattern for name in LOOPBACK_HOSTS for pattern in (name, f"{name}:*")]
    origins = [f"http://{name}:*" for name in LOOPBACK_HOSTS] + [f"http://{name}" for name in LOOPBACK_HOSTS]
    if settings.host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):
        hosts += [settings.host, f"{settings.host}:*"]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts + settings.allowed_hosts,
        allowed_origins=origins + settings.allowed_origins,
    )


def create_app(engine: ProxyEngine) -> Starlette:
    """The ASGI app over an already-started engine; its lifespan runs the MCP session manager."""
    server = ProxyServer(engine)
    security = security_settings(engine.settings)
    manager = StreamableHTTPSessionManager(
        app=server,
        security_settings=security,
        session_idle_timeout=engine.settings.session_idle_timeout_seconds,
    )
    legacy = SseServerTransport("/messages/", security_settings=security)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncGenerator[None]:
        async with manager.run():
            yield

    async def health(_: Request) -> JSONResponse:
        statuses = engine.statuses()
        return JSONResponse(
            {
                "status": "ok",
                "upstreams": {
                    f"{s.agent_id}/{s.name}" if s.agent_id else s.name: {
                        "state": s.state,
                        "tools": s.tool_count,
                        "sessions": s.client_sessions,
                    }
                    for s in statuses
                },
            }
        )

    return Starlette(
        routes=[
            Route("/mcp", endpoint=StreamableHTTPASGIApp(manager)),
            Route("/agents/{agent}/mcp", endpoint=StreamableHTTPASGIApp(manager)),
            Route("/sse", endpoint=_LegacySseStream(server, legacy), methods=["GET"]),
            Mount("/messages/", app=legacy.handle_post_message),
            Route("/healthz", endpoint=health),
            *admin_routes(
                Control(engine, allows_stdio=engine.settings.allow_stdio_services_via_api), engine.settings, security
            ),
        ],
        lifespan=lifespan,
    )


class _LegacySseStream:
    """`GET /sse`: one legacy HTTP+SSE client, whose connection is its session until the stream closes."""

    def __init__(self, server: ProxyServer, transport: SseServerTransport) -> None:
        self._server = server
        self._transport = transport

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self._transport.connect_sse(scope, receive, send) as (read_stream, write_stream):
                await self._server.run(read_stream, write_stream, self._server.create_initialization_options())
        except ValueError:
            return  # refused by the Host/Origin checks, which already answered 421 or 403


async def serve_http(settings: ProxySettings) -> None:
    """Start every upstream, then serve Streamable HTTP until interrupted."""
    async with ProxyEngine(settings) as engine:
        if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.allowed_hosts:
            logger.warning(
                "bound to %s but allowed_hosts is empty: requests must use a loopback Host header or get 421; "
                "list the names clients use in allowed_hosts",
                settings.host,
            )
        server = _Server(
            uvicorn.Config(
                create_app(engine),
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level.lower(),
                access_log=False,
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
                lifespan="on",
            )
        )
        logger.info("serving MCP at http://%s:%d/mcp", settings.host, settings.port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, server)
            await server.serve()
            tg.cancel_scope.cancel()


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: after a graceful stop it re-raises the signal, which
    would kill the process before the engine could close the upstreams. `_stop_on_signals` stands in."""

    @contextmanager
    def capture_signals(self) -> Generator[None]:
        yield


async def _stop_on_signals(server: uvicorn.Server) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("%s received: shutting down", signal.Signals(signum).name)
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True
