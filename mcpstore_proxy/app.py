"""The HTTP face of the proxy, as a Starlette app: Streamable HTTP at `/mcp` (and `/agents/{id}/mcp` for an
agent's view), the legacy HTTP+SSE transport at `/sse` (events) and `/messages/` (posts) for older clients,
the admin API under `/admin` (see `admin`), the status page at `/status` (see `status_page`), the probes
`/health`, `/ready` and `/healthz` (`_Probes`), the Prometheus metrics at `/metrics` (see `metrics`), and the
RFC 9728 protected-resource metadata under `/.well-known/oauth-protected-resource`. Every MCP endpoint and the
admin API pass the gate (`gate`), which learns the principal a request proves.

The SDK's session manager serves `/mcp` with DNS-rebinding protection on: a
request whose Host is not allowed gets 421, a foreign Origin gets 403. Loopback
names are always allowed; `allowed_hosts` / `allowed_origins` in the config add
others (needed when binding to a non-loopback address).

The front door (`_FrontDoor`) admits new client sessions: while the proxy
drains for shutdown, and once `max_downstream_sessions` are open, a request
that would open one gets 503 with a JSON-RPC error naming the reason and the
fix, at once. Requests within open sessions pass. The SDK's session manager
makes the final, atomic decision for Streamable HTTP (its own limit is kept
at what the legacy SSE clients leave of ours), and when a burst of newcomers
meets that limit, its bare refusal is answered with ours.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcpstore_proxy.admin import admin_routes, operator_page
from mcpstore_proxy.auth import Authenticator
from mcpstore_proxy.compat import (
    carry_session_messages_on,
    frame_answers_by_first_event,
    keep_connection_callbacks_in_lists,
    open_http_sessions,
    set_session_limit,
    terminate_http_sessions,
)
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.control import Control
from mcpstore_proxy.direct_route import DirectRoute
from mcpstore_proxy.drain import Drain
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ConnectionLimitError, ProxyError, ShuttingDownError
from mcpstore_proxy.events import EventLog
from mcpstore_proxy.framing import FirstEventResponse
from mcpstore_proxy.gate import METADATA_PATH, AuthGate, principal_of
from mcpstore_proxy.lane import FastLane
from mcpstore_proxy.lean_channels import LeanContextStreams
from mcpstore_proxy.legacy_sse import LegacySse
from mcpstore_proxy.logs import ThrottledWarning, log_fields
from mcpstore_proxy.metrics import ProxyMetrics, metrics_route
from mcpstore_proxy.outstanding import Outstanding
from mcpstore_proxy.registry import ServicePolicy
from mcpstore_proxy.request_headers import request_headers
from mcpstore_proxy.server import REQUEST_SCOPE, ProxyServer
from mcpstore_proxy.status import status_report
from mcpstore_proxy.status_page import render_html
from mcpstore_proxy.taskless_sessions import TasklessSessionManager

__all__ = ["HttpFace", "create_app", "security_settings"]

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "[::1]")
_FLUSH_SECONDS: Final = 5.0


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


@dataclass(eq=False)
class HttpFace:
    """The app and the parts of it that shutdown needs to reach."""

    app: ASGIApp
    drain: Drain
    manager: StreamableHTTPSessionManager
    legacy: LegacySse

    door: _FrontDoor
    lane: FastLane

    async def close_client_sessions(self) -> None:
        """End every client session (Streamable HTTP and legacy SSE) so that every open response completes, once
        the answers already given have reached their clients (bounded)."""
        with anyio.move_on_after(_FLUSH_SECONDS):
            await self.door.requests_answered()
        with anyio.move_on_after(_FLUSH_SECONDS):
            # Legacy SSE answers travel on the event stream, not the POST: let them be written first.
            await anyio.wait_all_tasks_blocked()
        await terminate_http_sessions(self.manager)
        await self.legacy.close_all()


def create_app(engine: ProxyEngine) -> HttpFace:
    """The ASGI app over an already-started engine; its lifespan runs the MCP session manager."""
    settings = engine.settings
    # A request whose first event is its answer is answered in plain JSON, without an event stream.
    frame_answers_by_first_event(FirstEventResponse)
    # A legacy SSE session's and an HTTP upstream session's two message channels are lean ones (see
    # `lean_channels`; a Streamable HTTP session has none, see `taskless_sessions`), and so is each connection's
    # exit stack (its callbacks in a list).
    carry_session_messages_on(LeanContextStreams)
    keep_connection_callbacks_in_lists()
    metrics = ProxyMetrics(
        engine,
        downstream_sessions=lambda: open_http_sessions(manager) + legacy.open,
        requests_in_flight=lambda: server.drain.in_flight,
    )
    server = ProxyServer(engine, observer=metrics)
    security = security_settings(settings)
    manager = TasklessSessionManager(
        app=server,
        security_settings=security,
        session_idle_timeout=settings.session_idle_timeout_seconds,
        max_sessions=settings.max_downstream_sessions,
    )
    legacy = LegacySse(
        server,
        security,
        observer=metrics,
        names_principals=settings.metrics_per_principal,
        max_body_size=manager.max_request_body_size,
    )
    door = _FrontDoor(server.drain, manager, legacy, settings, engine.events)

    probes = _Probes(server.drain)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncGenerator[None]:
        async with server.rounds.running(), manager.run(), probes.serving():
            yield

    def status() -> dict[str, Any]:
        """The proxy's state in detail, for operators (`/admin/status`, and rendered at `/status`)."""
        return status_report(
            engine,
            is_draining=server.drain.is_draining,
            requests_in_flight=server.drain.in_flight,
            fast_lane_calls=lane.calls_served,
            fast_lane_streams=lane.streams_served,
            legacy_lane=legacy.served,
        )

    gate = AuthGate(
        Authenticator(settings.auth, admin_token=settings.admin_token),
        resource_url=_resource_url(settings),
        authorization_servers=_authorization_servers(settings),
    )
    # In-session tool calls take the fast lane; everything else, and anything it doubts, goes to the SDK.
    lane = FastLane(
        server,
        manager,
        security,
        StreamableHTTPASGIApp(manager),
        observer=metrics,
        names_principals=settings.metrics_per_principal,
    )
    mcp = gate.guard(door.guard(lane))
    control = Control(engine, policy=ServicePolicy.for_api(settings))
    app = Starlette(
        routes=[
            Route("/mcp", endpoint=mcp),  # what `DirectRoute` reaches first
            Route("/agents/{agent}/mcp", endpoint=mcp),
            Route("/sse", endpoint=gate.guard(door.guard(legacy.stream)), methods=["GET"]),
            Mount("/messages/", app=gate.guard(legacy.post)),
            Route(METADATA_PATH, endpoint=gate.metadata, methods=["GET"]),
            Route(f"{METADATA_PATH}/mcp", endpoint=gate.metadata, methods=["GET"]),
            Route("/health", endpoint=probes.health, methods=["GET"]),
            Route("/healthz", endpoint=probes.healthz, methods=["GET"]),
            Route("/ready", endpoint=probes.ready, methods=["GET"]),
            *admin_routes(control, settings, security, gate, status),
            metrics_route(metrics, settings, security, gate),
            operator_page("/status", lambda: render_html(status()), control, settings, security, gate),
        ],
        lifespan=lifespan,
    )
    return HttpFace(DirectRoute(app, "/mcp", mcp), server.drain, manager, legacy, door, lane)


class _Probes:
    """What Kubernetes asks, unauthenticated, and answered with nothing about the upstreams (that is
    `/admin/status`): `/health` (liveness) says the event loop answers, draining or not, since a liveness probe
    that failed during a drain would have the pod killed mid-drain; `/ready` (readiness) says whether to send new
    clients here: not before the app's lifespan has started (the listener opens after it), nor while draining.
    `/healthz` is `/health` under its older name, whose body still says `draining` during a drain."""

    def __init__(self, drain: Drain) -> None:
        self._drain = drain
        self._is_serving = False

    @asynccontextmanager
    async def serving(self) -> AsyncGenerator[None]:
        self._is_serving = True
        try:
            yield
        finally:
            self._is_serving = False

    async def health(self, _: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def healthz(self, _: Request) -> JSONResponse:
        return JSONResponse({"status": "draining" if self._drain.is_draining else "ok"})

    async def ready(self, _: Request) -> JSONResponse:
        if self._drain.is_draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not self._is_serving:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})


class _FrontDoor:
    """Admits new client sessions, or refuses them at once with a JSON-RPC error and 503."""

    def __init__(
        self,
        drain: Drain,
        manager: StreamableHTTPSessionManager,
        legacy: LegacySse,
        settings: ProxySettings,
        events: EventLog,
    ) -> None:
        self._drain = drain
        self._events = events
        self._manager = manager
        self._legacy = legacy
        self._limit = settings.max_downstream_sessions
        self._refusals = ThrottledWarning(logger)
        self._requests = Outstanding()

    def guard(self, app: ASGIApp) -> _Guarded:
        return _Guarded(self, app)

    async def requests_answered(self) -> None:
        """Wait until no request (other than an event stream) is being answered."""
        await self._requests.none_left()

    async def admit(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        opens = _opens_a_session(scope)
        if _is_modern(scope):
            # For the schema lookup of a 2026-07-28 request's `Mcp-Param` headers (`Downstream.input_schema`), the
            # one reader, in this request's own task. Not for a handshake-era request: the session's loop keeps
            # the context of the last message it read, and its tasks the one they started in, with the scope in it.
            REQUEST_SCOPE.set(scope)
        refusal = self._refusal() if opens else None
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send)
            return
        if scope["method"] == "GET":
            # An event stream: a legacy SSE one counts itself from its first step, before any await.
            await app(scope, receive, send)
            return
        if opens:
            set_session_limit(self._manager, max(1, self._limit - self._legacy.open))
            send = self._answering_the_managers_refusal(scope, receive, send)
        with self._requests:
            await app(scope, receive, send)

    def _answering_the_managers_refusal(self, scope: Scope, receive: Receive, send: Send) -> Send:
        """`send`, but for the session manager's own refusal at its limit (HTTP 503), which becomes ours."""
        is_replaced = False

        async def send_ours_instead(message: Message) -> None:
            nonlocal is_replaced
            if is_replaced:
                return  # the rest of the manager's refusal
            if message["type"] == "http.response.start" and message["status"] == 503:
                is_replaced = True
                await self._refuse(self._limit_reached(), scope, receive, send)
                return
            await send(message)

        return send_ours_instead

    async def _refuse(self, refusal: ProxyError, scope: Scope, receive: Receive, send: Send) -> None:
        principal = principal_of(scope).name
        self._refusals.warn("refused a new client session: %s", refusal.message, extra=log_fields(principal=principal))
        limit = "shutting_down" if isinstance(refusal, ShuttingDownError) else "max_downstream_sessions"
        self._events.record("refusal", principal=principal, reason=refusal.message, limit=limit)
        await _json_rpc_error(refusal)(scope, receive, send)

    def _refusal(self) -> ProxyError | None:
        if self._drain.is_draining:
            return ShuttingDownError(
                "mcpstore-proxy is shutting down and takes no new sessions; reconnect once it is back"
            )
        if open_http_sessions(self._manager) + self._legacy.open >= self._limit:
            return self._limit_reached()
        return None

    def _limit_reached(self) -> ConnectionLimitError:
        return ConnectionLimitError(
            f"mcpstore-proxy already holds {self._limit} client sessions (max_downstream_sessions); "
            "close idle clients (their sessions also end after session_idle_timeout_seconds), "
            "or raise max_downstream_sessions"
        )


class _Guarded:
    """An ASGI app behind the front door (a class, so that Starlette routes hand it every method as ASGI)."""

    def __init__(self, door: _FrontDoor, app: ASGIApp) -> None:
        self._door = door
        self._app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return self._door.admit(self._app, scope, receive, send)  # its coroutine: a frame less per request


def _is_modern(scope: Scope) -> bool:
    """A 2026-07-28 request (its `MCP-Protocol-Version` not a handshake era's), as the SDK's manager routes it."""
    version = request_headers(scope).protocol_version
    return version is not None and version.decode("latin-1") not in HANDSHAKE_PROTOCOL_VERSIONS


def _opens_a_session(scope: Scope) -> bool:
    """A GET /sse, or a handshake-era POST without a session id: what would open a client session."""
    method = scope["method"]
    if method == "GET":
        return scope["path"].endswith("/sse")
    if method != "POST":
        return False
    headers = request_headers(scope)
    if headers.session_id is not None:
        return False
    version = headers.protocol_version
    return version is None or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS


def _json_rpc_error(error: ProxyError) -> JSONResponse:
    details = {"code": error.code, "message": error.message, "data": {"type": type(error).__name__}}
    return JSONResponse({"jsonrpc": "2.0", "id": None, "error": details}, status_code=error.http_status)


def _resource_url(settings: ProxySettings) -> str:
    """This proxy's canonical MCP URL: `auth.resource`, else the address `serve` binds."""
    if settings.auth is not None and settings.auth.resource is not None:
        return settings.auth.resource
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}/mcp"


def _authorization_servers(settings: ProxySettings) -> list[str]:
    auth = settings.auth
    if auth is None:
        return []
    if auth.authorization_servers:
        return list(auth.authorization_servers)
    return [auth.jwt.issuer] if auth.jwt is not None else []
