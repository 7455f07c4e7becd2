"""The MCP face of the proxy: a low-level `Server` whose handlers are thin calls into `ProxyEngine`.

What this adapter owns is what only the wire knows: which session key a
request belongs to (see `keys`), when a downstream connection ends (its
`Connection.exit_stack`, unwound by the SDK on DELETE, idle expiry, EOF or
shutdown), and how our errors become MCP errors (`errors.to_mcp_error`).

Protocol eras. Handshake-era clients (2024-11-05 … 2025-11-25) are keyed by
their connection. A 2026-07-28 request has no connection to key on, so over
HTTP it is served with its explicit key (header or argument), or else with an
ephemeral session for that one call. To keep auto-negotiating clients (such
as the SDK's `Client(url)`) from landing in that era by accident and losing
their state, `server/discover` over HTTP without an explicit session header
advertises only the handshake versions; such clients then use the handshake
and keep their session. Over stdio the pipe itself is the session, so both
eras keep state.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Final

import anyio
from mcp import types
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ProxyError, to_mcp_error
from mcpstore_proxy.keys import SessionKey, resolve_session_key
from mcpstore_proxy.upstream import ProgressCallback

__all__ = ["ProxyServer", "downstream_connection"]

logger = logging.getLogger(__name__)

Context = ServerRequestContext[Any, Any]

_KEY_STATE: Final = "mcpstore_proxy.session_key"
_NOTIFY_SECONDS: Final = 1.0


def downstream_connection(ctx: Context) -> Connection:
    """The per-connection object behind a request.

    The SDK keeps it private (`ServerSession._connection`); this is the only
    place the proxy reaches for it, and a test pins the assumption.
    """
    connection = getattr(ctx.session, "_connection", None)
    if not isinstance(connection, Connection):
        raise RuntimeError("this mcp SDK no longer exposes ServerSession._connection; pin mcp to a supported release")
    return connection


class ProxyServer(Server[Any]):
    """Serves the engine's merged tools to one kind of downstream transport (HTTP or stdio)."""

    def __init__(self, engine: ProxyEngine, *, stdio: bool = False) -> None:
        super().__init__(
            "mcpstore-proxy",
            version=__version__,
            instructions="Tools from several MCP servers. Each client keeps its own upstream sessions; "
            f"pass '{engine.settings.session_argument}' to name a session that outlives this connection.",
            on_list_tools=self._list_tools,
        )
        # One OpenTelemetry span per message is measurable per-call cost, and there is no exporter by default.
        self.middleware.clear()
        self.add_request_handler("tools/call", types.CallToolRequestParams, self._call_tool)
        self.add_request_handler("server/discover", types.RequestParams, self._discover)
        self.add_notification_handler("notifications/initialized", types.NotificationParams, self._initialized)
        self._engine = engine
        self._argument = engine.settings.session_argument
        self._header = engine.settings.session_header.lower()
        self._stdio_key = SessionKey.connection("stdio") if stdio else None
        self._connections: dict[int, Connection] = {}
        engine.add_listener(self._announce_tools_changed)

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        # The SDK's session manager never passes NotificationOptions, so listChanged is declared here.
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True), experimental_capabilities, extensions
        )

    async def _list_tools(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        self._adopt(ctx)
        return types.ListToolsResult(tools=self._engine.list_tools())

    async def _call_tool(self, ctx: Context, params: types.CallToolRequestParams) -> dict[str, Any]:
        try:
            route = self._engine.route(params.name)
            arguments = dict(params.arguments or {})
            named = None if route.declares_session_argument else arguments.pop(self._argument, None)
            key = resolve_session_key(
                named,
                ctx.request.headers.get(self._header) if ctx.request is not None else None,
                self._adopt(ctx),
                argument_name=self._argument,
                header_name=self._engine.settings.session_header,
            )
            result = await self._engine.call_tool(
                route,
                arguments,
                key,
                progress_callback=_progress_forwarder(ctx),
                on_reset=partial(_warn_reset, ctx, key),
            )
        except ProxyError as error:
            raise to_mcp_error(error) from None
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            # Upstreams speak the handshake era; a 2026-07-28 result must say it is complete.
            result.setdefault("resultType", "complete")
        return result

    async def _discover(self, ctx: Context, params: types.RequestParams) -> types.DiscoverResult:
        result = await self._handle_discover(ctx, params)
        if ctx.request is None or self._header in ctx.request.headers:
            return result
        return result.model_copy(update={"supported_versions": list(HANDSHAKE_PROTOCOL_VERSIONS)})

    async def _initialized(self, ctx: Context, params: types.NotificationParams) -> None:
        self._adopt(ctx)

    def _adopt(self, ctx: Context) -> SessionKey | None:
        """The connection's own session key, registering the connection on first sight.

        Registration hooks the connection's end (DELETE, idle expiry, EOF,
        shutdown) to close every upstream session keyed by it.
        """
        if self._stdio_key is not None and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return self._stdio_key
        connection = downstream_connection(ctx)
        key: SessionKey | None = connection.state.get(_KEY_STATE)
        if key is not None:
            return key
        if self._stdio_key is None and connection.session_id is None:
            return None
        key = self._stdio_key or SessionKey.connection(connection.session_id or "")
        connection.state[_KEY_STATE] = key
        self._connections[id(connection)] = connection
        connection.exit_stack.push_async_callback(self._connection_ended, connection, key)
        return key

    async def _connection_ended(self, connection: Connection, key: SessionKey) -> None:
        self._connections.pop(id(connection), None)
        await self._engine.end_session(key)

    async def _announce_tools_changed(self) -> None:
        for connection in list(self._connections.values()):
            with anyio.move_on_after(_NOTIFY_SECONDS):
                await connection.send_tool_list_changed()


def _progress_forwarder(ctx: Context) -> ProgressCallback | None:
    """Relay upstream progress to the caller under the caller's own token, when it asked for progress."""
    if ctx.meta is None or "progress_token" not in ctx.meta:
        return None
    return ctx.session.report_progress


async def _warn_reset(ctx: Context, key: SessionKey, upstream: str) -> None:
    """Tell the client, on this request's stream, that its upstream state is gone."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and types.LOG_LEVEL_META_KEY not in (ctx.meta or {}):
        return
    message = (
        f"upstream '{upstream}' was restarted: the state of {key} with it was reset "
        "(a fresh upstream session serves this call)"
    )
    await ctx.session.send_notification(
        types.LoggingMessageNotification(
            params=types.LoggingMessageNotificationParams(level="warning", data=message, logger="mcpstore-proxy")
        ),
        related_request_id=ctx.request_id,
    )
