"""Running the proxy until it is told to stop: over HTTP (`serve_http`) or for one client on a pipe
(`serve_stdio`).

Both answer at once: the engine starts its upstreams in the background, so
`/healthz` and `initialize` do not wait for a slow one, and its tools join
later with a list-changed notice. Signals are caught before anything starts,
so a SIGTERM at any moment, even while upstreams are still starting, ends in
an orderly shutdown that leaves no process behind.

Shutdown: the first SIGTERM or SIGINT drains (see `drain`): new sessions and
requests are refused with a JSON-RPC error while the listener stays open,
requests in flight get `shutdown_grace_seconds` to finish, the rest are
cancelled with an error to their clients; then every client session is ended,
every upstream closed, and the process exits 0. A second signal skips the
grace period. Over stdio, EOF on stdin ends the proxy at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from typing import Final

import anyio
import uvicorn
from mcp.server.stdio import stdio_server

from mcpstore_proxy.app import create_app
from mcpstore_proxy.compat import SignalFreeServer
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ProxyError
from mcpstore_proxy.server import ProxyServer
from mcpstore_proxy.transports import TransportFactory, open_transport

__all__ = ["serve_http", "serve_stdio"]

logger = logging.getLogger(__name__)

_CLOSE_CONNECTIONS_SECONDS: Final = 5
"""uvicorn's own grace for connections still open once every client session has ended."""


async def serve_http(settings: ProxySettings, *, transports: TransportFactory = open_transport) -> None:
    """Serve Streamable HTTP (and legacy SSE, and the admin API) until a signal, then drain and stop.

    Raises:
        ProxyError: the address could not be bound.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with ProxyEngine(settings, transports=transports) as engine:
            if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.allowed_hosts:
                logger.warning(
                    "bound to %s but allowed_hosts is empty: requests must use a loopback Host header or get 421; "
                    "list the names clients use in allowed_hosts",
                    settings.host,
                )
            face = create_app(engine)
            server = SignalFreeServer(
                uvicorn.Config(
                    face.app,
                    host=settings.host,
                    port=settings.port,
                    log_level=settings.log_level.lower(),
                    access_log=False,
                    timeout_graceful_shutdown=_CLOSE_CONNECTIONS_SECONDS,
                    lifespan="on",
                )
            )
            stopping = anyio.Event()
            served = anyio.Event()
            could_not_listen = False

            async def run_server() -> None:
                nonlocal could_not_listen
                try:
                    await server.serve()
                except SystemExit:
                    could_not_listen = True  # uvicorn has logged why (the address is in use, for one)
                finally:
                    served.set()
                    stopping.set()

            async def watch_signals() -> None:
                async for signum in _named(signals):
                    if not stopping.is_set():
                        logger.info("%s received: draining, then stopping (a second signal stops at once)", signum)
                        stopping.set()
                    else:
                        logger.info("%s received again: stopping now", signum)
                        face.drain.hurry()
                        server.force_exit = True

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_signals)
                tg.start_soon(run_server)
                logger.info("serving MCP at http://%s:%d/mcp", settings.host, settings.port)
                await stopping.wait()
                if not served.is_set():
                    await face.drain.drain(settings.shutdown_grace_seconds)
                    await face.close_client_sessions()
                    server.should_exit = True
                    await served.wait()
                tg.cancel_scope.cancel()
            if could_not_listen:
                raise ProxyError(
                    f"could not listen on {settings.host}:{settings.port} (see the error above); "
                    "pick another address with --host/--port"
                )
    logger.info("stopped")


async def serve_stdio(settings: ProxySettings, *, transports: TransportFactory = open_transport) -> None:
    """Serve one client on stdin/stdout until stdin closes (then at once) or a signal (then drain first)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with ProxyEngine(settings, transports=transports) as engine, anyio.create_task_group() as tg:
            server = ProxyServer(engine, stdio=True)

            async def drain_then_stop() -> None:
                await server.drain.drain(settings.shutdown_grace_seconds)
                tg.cancel_scope.cancel()

            async def watch_signals() -> None:
                async for signum in _named(signals):
                    if not server.drain.is_draining:
                        logger.info("%s received: draining, then stopping", signum)
                        tg.start_soon(drain_then_stop)
                    else:
                        server.drain.hurry()

            tg.start_soon(watch_signals)
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
            tg.cancel_scope.cancel()


async def _named(signals: AsyncIterator[int]) -> AsyncIterator[str]:
    async for signum in signals:
        yield signal.Signals(signum).name
