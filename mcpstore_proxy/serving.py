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

SIGHUP reloads the config file (see `reload`), as `POST /admin/reload` does, and
so does a change to the file with `watch_config: true`. Once draining has begun,
reloads are refused.
"""

from __future__ import annotations

import logging
import signal
from typing import Final

import anyio
import anyio.abc
import uvicorn

from mcpstore_proxy.app import create_app
from mcpstore_proxy.clock import SYSTEM_CLOCK, Clock
from mcpstore_proxy.compat_uvicorn import LeanHttpToolsProtocol, SignalFreeServer, TrimmedFieldValues
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ConfigError, ProxyError
from mcpstore_proxy.lane_messages import MessageLane
from mcpstore_proxy.reload import Reloader, reload_in_background, watch_config_file
from mcpstore_proxy.server import ProxyServer
from mcpstore_proxy.sniffing import sniffed_as_asyncio
from mcpstore_proxy.stdio import stdio_streams
from mcpstore_proxy.transports import TransportFactory, open_transport

__all__ = ["StopRequests", "serve_http", "serve_pipe", "serve_stdio"]

logger = logging.getLogger(__name__)

_CLOSE_CONNECTIONS_SECONDS: Final = 5
"""uvicorn's own grace for connections still open once every client session has ended."""


class StopRequests:
    """Requests to stop, from signals or from whoever embeds the proxy: the first drains, a later one hurries.
    SIGHUP, the other signal an operator sends a server, asks `reloader` for a reload instead."""

    def __init__(self) -> None:
        self.asked = anyio.Event()
        self.hurried = anyio.Event()
        self.reloader: Reloader | None = None
        """What SIGHUP reloads, once the engine runs (a SIGHUP before that is ignored, saying so)."""

    def __repr__(self) -> str:
        return f"<StopRequests {'hurried' if self.hurried.is_set() else 'asked' if self.asked.is_set() else 'none'}>"

    def request(self, why: str) -> None:
        if not self.asked.is_set():
            logger.info("%s: draining, then stopping (asking again stops at once)", why)
            self.asked.set()
        elif not self.hurried.is_set():
            logger.info("%s again: stopping now", why)
            self.hurried.set()

    async def watch_signals(self) -> None:
        """Turn SIGINT and SIGTERM into requests, and SIGHUP into reloads, until cancelled."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self._reload()
                else:
                    self.request(f"{signal.Signals(signum).name} received")

    async def _reload(self) -> None:
        if self.reloader is None:
            logger.warning("SIGHUP received before the proxy serves: no reload (send it again once it serves)")
            return
        await reload_in_background(self.reloader, "signal")


async def serve_http(
    settings: ProxySettings,
    *,
    transports: TransportFactory = open_transport,
    clock: Clock = SYSTEM_CLOCK,
    stop: StopRequests | None = None,
) -> None:
    """Serve Streamable HTTP (and legacy SSE, and the admin API) until asked to stop (by default, by SIGTERM or
    SIGINT), then drain and stop.

    Raises:
        ProxyError: the address could not be bound.
    """
    check_exposure(settings)
    check_tracing(settings)
    with sniffed_as_asyncio():
        listened = await _serve_http_until_stopped(settings, transports, clock, stop)
    if not listened:
        raise ProxyError(
            f"could not listen on {settings.host}:{settings.port} (see the error above); "
            "pick another address with --host/--port"
        )
    logger.info("stopped")


async def _serve_http_until_stopped(
    settings: ProxySettings, transports: TransportFactory, clock: Clock, stop: StopRequests | None
) -> bool:
    """Serve until asked to stop; False if the address could not be bound."""
    listened = False
    async with anyio.create_task_group() as signals:
        if stop is None:
            stop = StopRequests()
            signals.start_soon(stop.watch_signals)  # before anything starts: no signal may find us unprepared
        async with ProxyEngine(settings, transports=transports, clock=clock) as engine:
            stop.reloader = engine.reloader
            listened = await _serve_http(engine, stop)
        signals.cancel_scope.cancel()
    return listened


async def _serve_http(engine: ProxyEngine, stop: StopRequests) -> bool:
    """Serve until asked to stop; False if the address could not be bound."""
    settings = engine.settings
    if not settings.binds_loopback and not settings.allowed_hosts:
        logger.warning(
            "bound to %s but allowed_hosts is empty: requests must use a loopback Host header or get 421; "
            "list the names clients use in allowed_hosts",
            settings.host,
        )
    face = create_app(engine)
    server = SignalFreeServer(
        uvicorn.Config(
            TrimmedFieldValues(face.app),
            interface="asgi3",  # a plain callable returning the app's coroutine (see `TrimmedFieldValues`)
            http=LeanHttpToolsProtocol,  # httptools, without a queue per connection for requests seldom pipelined
            proxy_headers=False,  # nothing reads a client's address or scheme: a layer and a header pass less
            server_header=False,  # names no server software to a scan (and a header less on every answer)
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            log_config=None,  # uvicorn's lines go through ours (`logs`): redacted, and JSON with `log_format: json`
            access_log=False,
            timeout_graceful_shutdown=_CLOSE_CONNECTIONS_SECONDS,
            lifespan="on",
        )
    )
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

    async def hurry_when_asked() -> None:
        await stop.hurried.wait()
        face.drain.hurry()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_server)
        tg.start_soon(hurry_when_asked)
        _watch_config(tg, engine)
        logger.info("serving MCP at http://%s:%d/mcp", settings.host, settings.port)
        await _first_of(stop.asked, served)
        if not served.is_set():
            engine.reloader.refuse_from_now("is shutting down")
            await face.drain.drain(engine.settings.shutdown_grace_seconds)  # a reload may have changed it
            await face.close_client_sessions()
            server.should_exit = True
            await served.wait()
        tg.cancel_scope.cancel()
    return not could_not_listen


def check_exposure(settings: ProxySettings) -> None:
    """Secure by default: bound beyond this machine, the proxy needs `auth`, or says plainly that it goes without.

    Raises:
        ConfigError: `serve` would bind a non-loopback address without `auth`.
    """
    if settings.binds_loopback:
        return
    if settings.auth is None:
        raise ConfigError(
            f"serving on {settings.host} reaches beyond this machine and needs 'auth' (bearer tokens or JWT; see "
            "the README's security model); to serve without authentication anyway, set 'auth: {mode: none}'"
        )
    if not settings.auth.is_on:
        logger.warning(
            "serving on %s WITHOUT authentication (auth: {mode: none}): anyone who can reach this address can use "
            "every upstream and every named session",
            settings.host,
        )


def check_tracing(settings: ProxySettings) -> None:
    """`tracing: true` needs the `otel` extra: said in one line before anything starts, not as a traceback later.
    Tracing starts here (its exporter, unless a tracer provider is set already); the server's spans use it.

    Raises:
        ConfigError: the `otel` extra is missing.
    """
    if not settings.tracing:
        return
    try:
        from mcpstore_proxy.tracing import start_tracing
    except ImportError as error:
        raise ConfigError(f'tracing: true needs OpenTelemetry ({error}): pip install "mcpstore-proxy[otel]"') from None
    start_tracing()


async def serve_stdio(settings: ProxySettings, *, transports: TransportFactory = open_transport) -> None:
    """Serve one client on stdin/stdout until stdin closes (then at once) or a signal (then drain first)."""
    check_tracing(settings)
    stop = StopRequests()
    with sniffed_as_asyncio():
        await _serve_stdio_until_stopped(settings, transports, stop)


async def _serve_stdio_until_stopped(settings: ProxySettings, transports: TransportFactory, stop: StopRequests) -> None:
    async with anyio.create_task_group() as signals:
        signals.start_soon(stop.watch_signals)  # before anything starts: no signal may find us unprepared
        async with ProxyEngine(settings, transports=transports) as engine, anyio.create_task_group() as tg:
            server = ProxyServer(engine, stdio=True)
            stop.reloader = engine.reloader

            async def drain_then_stop() -> None:
                await stop.asked.wait()
                engine.reloader.refuse_from_now("is shutting down")
                await server.drain.drain(engine.settings.shutdown_grace_seconds)
                tg.cancel_scope.cancel()

            async def hurry_when_asked() -> None:
                await stop.hurried.wait()
                server.drain.hurry()

            tg.start_soon(drain_then_stop)
            tg.start_soon(hurry_when_asked)
            _watch_config(tg, engine)
            await serve_pipe(server)
            tg.cancel_scope.cancel()
        signals.cancel_scope.cancel()


async def serve_pipe(server: ProxyServer, stdin: int = 0, stdout: int = 1, *, lane: MessageLane | None = None) -> None:
    """Serve the one client of `server` on a pipe (`stdin`, `stdout`) until EOF, its calls and listings in `lane`
    (see `lane_messages`)."""
    lane = lane or MessageLane.for_pipe(server)
    async with (
        server.rounds.running(),
        stdio_streams(stdin, stdout, lane=lane) as (read_stream, write_stream),
        lane.running(),
    ):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def _watch_config(tg: anyio.abc.TaskGroup, engine: ProxyEngine) -> None:
    """With `watch_config: true`, reload whenever the config file changes (in `tg`, until it ends)."""
    path = engine.settings.config_path
    if engine.settings.watch_config and path is not None:
        logger.info("watching %s for changes (watch_config)", path)
        tg.start_soon(watch_config_file, path, engine.reloader, name="config watcher")


async def _first_of(*events: anyio.Event) -> None:
    """Return once any of `events` is set."""
    async with anyio.create_task_group() as tg:

        async def cancel_on(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(cancel_on, event)
