"""The MCP face of the proxy: a low-level `Server` whose handlers are thin calls into `ProxyEngine`.

What this adapter owns is what only the wire knows: which session key a
request belongs to (see `keys`), how to reach the client that sent it (its
request's stream, its connection's stream: `ClientChannel`s for the relay),
when a downstream connection ends (its `Connection.exit_stack`, unwound by the
SDK on DELETE, idle expiry, EOF or shutdown), and how our errors become MCP
errors (`errors.to_mcp_error`).

Protocol eras. Both are served, and `server/discover` offers both (the -32022
error lists the 2026-07-28 versions, all of which discover offers too).
Handshake-era clients (2024-11-05 … 2025-11-25) are keyed by their connection.
A 2026-07-28 request has no connection: it is served with its explicit key
(header or argument), else in its principal's own session (one per principal
and agent scope), so a keyless client keeps its state across calls. Over stdio
the pipe itself is the session. An upstream's questions (sampling, elicitation,
roots) reach a 2026-07-28 client as `input_required` rounds (see `rounds`), and
what its sessions say outside a call reaches its `subscriptions/listen` streams
(see `listen`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Final, TypeVar

import anyio
from mcp import MCPError, types
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from mcp_types.methods import CACHEABLE_METHODS
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import Scope

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.catalog import Catalog
from mcpstore_proxy.channels import ConnectionStream, RequestStream
from mcpstore_proxy.compat import downstream_connection
from mcpstore_proxy.drain import Drain
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import (
    ProxyError,
    UnknownPromptError,
    UnknownResourceError,
    UnknownToolError,
    to_mcp_error,
)
from mcpstore_proxy.gate import AGENT_HEADER, agent_of, principal_of
from mcpstore_proxy.hangup import hang_up_source, unless_client_hangs_up
from mcpstore_proxy.keys import STORE_SCOPE, SessionKey, resolve_session_key
from mcpstore_proxy.listen import ListenChannel, catalog_events
from mcpstore_proxy.principals import ANONYMOUS, LOCAL, Principal
from mcpstore_proxy.relay import ClientCall, ClientChannel
from mcpstore_proxy.rounds import InputRounds

__all__ = ["AGENT_HEADER", "EXISTING_SESSION_HEADER", "REQUEST_SCOPE", "ProxyServer"]

logger = logging.getLogger(__name__)

Context = ServerRequestContext[Any, Any]
_ResultT = TypeVar("_ResultT", bound=BaseModel)

EXISTING_SESSION_HEADER: Final = "x-mcpstore-existing-session"
"""Sent as `1` (by the remote SDK): a tool call must run in an open named session, not open one."""
REQUEST_SCOPE: Final[ContextVar[Scope | None]] = ContextVar("mcpstore_proxy.request_scope", default=None)
"""The ASGI scope of the HTTP request being served (set by the app as it hands the request to the MCP transport)."""
_LISTINGS: Final = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})
_KEY_STATE: Final = "mcpstore_proxy.session_key"
_CHANNEL_STATE: Final = "mcpstore_proxy.channel"
_NOTIFY_SECONDS: Final = 1.0


class ProxyServer(Server[Any]):
    """Serves the engine's merged offer to one kind of downstream transport (HTTP, SSE or stdio)."""

    def __init__(self, engine: ProxyEngine, *, stdio: bool = False, drain: Drain | None = None) -> None:
        super().__init__(
            "mcpstore-proxy",
            version=__version__,
            instructions="Tools from several MCP servers. Each client keeps its own upstream sessions; "
            f"pass '{engine.settings.session_argument}' to name a session that outlives this connection.",
            on_list_tools=self._list_tools,
            on_list_prompts=self._list_prompts,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
        )
        # One OpenTelemetry span per message is measurable per-call cost, and there is no exporter by default.
        self.middleware.clear()
        self.middleware.append(self._cached_listing)
        self.add_request_handler("tools/call", types.CallToolRequestParams, self._call_tool)
        self.add_request_handler("prompts/get", types.GetPromptRequestParams, self._get_prompt)
        self.add_request_handler("resources/read", types.ReadResourceRequestParams, self._read_resource)
        self.add_request_handler("resources/subscribe", types.SubscribeRequestParams, self._subscribe)
        self.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, self._unsubscribe)
        self.add_request_handler("completion/complete", types.CompleteRequestParams, self._complete)
        self.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._set_logging_level)
        self.add_request_handler("server/discover", types.RequestParams, self._discover)
        self.add_request_handler("subscriptions/listen", types.SubscriptionsListenRequestParams, self._listen)
        self.add_notification_handler("notifications/initialized", types.NotificationParams, self._initialized)
        self.add_notification_handler("notifications/roots/list_changed", types.NotificationParams, self._roots_changed)
        self._engine = engine
        self.drain = drain or Drain()
        self._argument = engine.settings.session_argument
        self._header = engine.settings.session_header.lower()
        self._stdio_key = SessionKey.connection("stdio") if stdio else None
        self._connections: dict[int, Connection] = {}
        # Weak: a key's channel lives while its listen streams or its upstream sessions (whose relay owner it is) do.
        # The SDK checks a 2026-07-28 call's `Mcp-Param-*` headers against the tool's schema; without this it runs
        # the whole tools/list handler for every such call to find that schema.
        self.get_tool_input_schema = self._input_schema
        # Each catalog's listings, validated and shaped for the wire once per method and protocol version.
        self._listings: weakref.WeakKeyDictionary[Catalog, dict[tuple[str, str], HandlerResult]] = (
            weakref.WeakKeyDictionary()
        )
        self._listeners: weakref.WeakValueDictionary[SessionKey, ListenChannel] = weakref.WeakValueDictionary()
        self.rounds = InputRounds()
        """The 2026-07-28 multi-round exchanges in progress; whoever serves this server enters `rounds.running()`."""
        engine.add_listener(self._announce_catalog_changed)

    # Capabilities: what the upstreams offer, not what handlers happen to be registered.

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(notification_options, experimental_capabilities, extensions)

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        capabilities = self._engine.capabilities()
        return capabilities.model_copy(update={"experimental": experimental_capabilities})

    # Listings: answered from the catalog the key sees, never by opening a session.

    async def _list_tools(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=(await self._catalog(ctx)).tools)

    async def _list_prompts(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=(await self._catalog(ctx)).prompts)

    async def _list_resources(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=(await self._catalog(ctx)).resources)

    async def _list_resource_templates(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=(await self._catalog(ctx)).templates)

    async def _cached_listing(self, ctx: Context, call_next: CallNext) -> HandlerResult:
        """Answer a listing from its catalog's wire form, shaped (validated, serialised) the first time only: the
        SDK's shaping of a thousand tools costs tens of milliseconds, and a catalog is replaced, never changed."""
        if ctx.method not in _LISTINGS:
            return await call_next(ctx)
        catalog = await self._catalog(ctx)
        shaped = self._listings.setdefault(catalog, {})
        key = (ctx.method, ctx.protocol_version)
        if key not in shaped:
            shaped[key] = await call_next(ctx)
        return shaped[key]

    async def _catalog(self, ctx: Context) -> Catalog:
        await self._engine.settled()
        try:
            return self._engine.catalog_for(self._key(ctx))
        except ProxyError as error:
            raise to_mcp_error(error) from None

    # Requests that run in the key's upstream session.

    async def _call_tool(self, ctx: Context, params: types.CallToolRequestParams) -> dict[str, Any]:
        async def forward(call: ClientCall) -> dict[str, Any]:
            base_key = self._key(ctx)
            route = self._engine.tool_route(base_key, params.name)
            arguments = dict(params.arguments or {})
            argument = route.session_argument
            named = arguments.pop(argument, None) if argument is not None else None
            key = resolve_session_key(
                named,
                base_key.name if base_key.is_explicit else None,
                self._adopt(ctx),
                argument_name=argument or self._argument,
                header_name=self._engine.settings.session_header,
                agent=base_key.agent,
                principal=base_key.principal,
            )
            if key != base_key:
                # The tool exists in the connection's view; the named session may just never have listed its own.
                with contextlib.suppress(UnknownToolError):
                    route = self._engine.tool_route(key, params.name)
            if key.is_explicit and ctx.request is not None and ctx.request.headers.get(EXISTING_SESSION_HEADER) == "1":
                self._engine.records.require(key)
            self._admit(ctx, key)
            return await self._engine.call_tool(key, route, arguments, call)

        return await self._answer(ctx, forward, rounds=params)

    async def _get_prompt(self, ctx: Context, params: types.GetPromptRequestParams) -> dict[str, Any]:
        return await self._answer(
            ctx, lambda call: self._engine.get_prompt(self._key(ctx), params, call), rounds=params
        )

    async def _read_resource(self, ctx: Context, params: types.ReadResourceRequestParams) -> dict[str, Any]:
        return await self._answer(
            ctx, lambda call: self._engine.read_resource(self._key(ctx), params, call), rounds=params
        )

    async def _complete(self, ctx: Context, params: types.CompleteRequestParams) -> dict[str, Any]:
        return await self._answer(ctx, lambda call: self._engine.complete(self._key(ctx), params, call))

    async def _subscribe(self, ctx: Context, params: types.SubscribeRequestParams) -> types.EmptyResult:
        async def forward(call: ClientCall) -> dict[str, Any]:
            await self._engine.subscribe(self._key(ctx), params.uri, call, subscribe=True)
            return {}

        await self._answer(ctx, forward)
        return types.EmptyResult()

    async def _unsubscribe(self, ctx: Context, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        async def forward(call: ClientCall) -> dict[str, Any]:
            await self._engine.subscribe(self._key(ctx), params.uri, call, subscribe=False)
            return {}

        await self._answer(ctx, forward)
        return types.EmptyResult()

    async def _set_logging_level(self, ctx: Context, params: types.SetLevelRequestParams) -> types.EmptyResult:
        async def forward(call: ClientCall) -> dict[str, Any]:
            key = self._key(ctx)
            if not key.is_ephemeral:
                await self._engine.set_logging_level(key, params.level)
            return {}

        await self._answer(ctx, forward)
        return types.EmptyResult()

    async def _discover(self, ctx: Context, params: types.RequestParams) -> types.DiscoverResult:
        # Every era is served, and each keeps state (see the module docstring); -32022 lists the modern ones.
        return types.DiscoverResult(
            supported_versions=[*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS],
            capabilities=self.get_capabilities(protocol_version=ctx.protocol_version),
            instructions=self.instructions,
        )

    async def _listen(
        self, ctx: Context, params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """A 2026-07-28 listen stream: the key's list changes and resource updates, until the client leaves."""
        try:
            key = self._key(ctx)
        except ProxyError as error:
            raise to_mcp_error(error) from None
        channel = self._listen_channel(key)
        call = ClientCall(stream=channel, connection=channel)
        uris = list(params.notifications.resource_subscriptions or ())
        for uri in uris:
            with contextlib.suppress(ProxyError, MCPError):  # like any subscription, one that never fires
                await self._engine.subscribe(key, uri, call, subscribe=True)
        try:
            return await channel.handler(ctx, params)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_NOTIFY_SECONDS):
                for uri in uris:
                    with contextlib.suppress(ProxyError, MCPError):
                        await self._engine.subscribe(key, uri, call, subscribe=False)

    async def _initialized(self, ctx: Context, params: types.NotificationParams) -> None:
        self._adopt(ctx)

    async def _roots_changed(self, ctx: Context, params: types.NotificationParams) -> None:
        with contextlib.suppress(ProxyError):
            key = self._key(ctx)
            if not key.is_ephemeral:
                await self._engine.roots_changed(key)

    def _input_schema(self, name: str) -> Mapping[str, Any] | None:
        """Tool `name`'s input schema as the HTTP request being served sees it (None: nothing to check)."""
        scope = REQUEST_SCOPE.get()
        if scope is None:
            return None
        try:
            agent, principal = agent_of(scope), principal_of(scope).name
            header = Headers(scope=scope).get(self._header)
            keyless = SessionKey.connection("", agent, principal).for_principal()
            key = resolve_session_key(
                None,
                header,
                keyless,
                argument_name=self._argument,
                header_name=self._engine.settings.session_header,
                agent=agent,
                principal=principal,
            )
            tools = self._engine.catalog_for(key).tools
        except ProxyError:
            return None  # the request itself fails in a moment, with the same error
        return next((tool.input_schema for tool in tools if tool.name == name), None)

    # Keys and channels.

    def _key(self, ctx: Context) -> SessionKey:
        """The key of a request without a session argument: header, then connection, else ephemeral.

        Raises:
            InvalidSessionKeyError: the agent id or the session header is malformed.
            SessionLimitError: it names a session that would take the client past its limit.
        """
        agent = self._agent(ctx)
        header = ctx.request.headers.get(self._header) if ctx.request is not None else None
        key = resolve_session_key(
            None,
            header,
            self._adopt(ctx),
            argument_name=self._argument,
            header_name=self._engine.settings.session_header,
            agent=agent,
            principal=self._principal(ctx).name,
        )
        self._admit(ctx, key)
        return key

    def _admit(self, ctx: Context, key: SessionKey) -> None:
        """Count a named session against the client that uses it: its principal, where one is proved; else its
        connection, or without one (a 2026-07-28 request over HTTP) its address."""
        if not key.is_explicit:
            return
        principal = self._principal(ctx)
        connection = self._adopt(ctx)
        if principal not in (ANONYMOUS, LOCAL):
            client = str(principal)
        elif connection is not None and connection.kind == "connection":
            client = f"connection {connection.name}"
        else:
            peer = ctx.request.client if ctx.request is not None else None
            client = f"address {peer.host if peer is not None else 'unknown'}"
        self._engine.named.admit(key, client)

    def _agent(self, ctx: Context) -> str:
        """The agent scope of a request: the `/agents/{id}/mcp` path, else the `X-MCPStore-Agent` header."""
        return agent_of(ctx.request.scope) if ctx.request is not None else STORE_SCOPE

    def _principal(self, ctx: Context) -> Principal:
        """Who the request proved to be, at the gate (the local principal over stdio)."""
        return principal_of(ctx.request.scope if ctx.request is not None else None)

    def _adopt(self, ctx: Context) -> SessionKey | None:
        """The connection's own session key, registering the connection on first sight.

        Registration hooks the connection's end (DELETE, idle expiry, EOF,
        shutdown) to close every upstream session keyed by it.
        """
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            # Over HTTP a 2026-07-28 request has no connection: without a key, it is its principal's.
            if self._stdio_key is not None:
                return self._stdio_key
            return SessionKey.connection("", self._agent(ctx), self._principal(ctx).name).for_principal()
        connection = downstream_connection(ctx)
        key: SessionKey | None = connection.state.get(_KEY_STATE)
        if key is not None:
            return key
        principal = self._principal(ctx).name
        key = SessionKey.connection(connection.session_id or secrets.token_hex(16), self._agent(ctx), principal)
        connection.state[_KEY_STATE] = key
        connection.state[_CHANNEL_STATE] = ConnectionStream(connection)
        self._connections[id(connection)] = connection
        connection.exit_stack.push_async_callback(self._connection_ended, connection, key)
        return key

    def _client_call(self, ctx: Context) -> ClientCall:
        connection = downstream_connection(ctx)
        channel: ClientChannel | None = connection.state.get(_CHANNEL_STATE)
        if channel is None:
            # A 2026-07-28 request (over HTTP or stdio): what its sessions say outside a call goes to the key's
            # listen streams, never unasked down the pipe.
            channel = self._listen_channel(self._key(ctx))
        wants_progress = ctx.meta is not None and "progress_token" in ctx.meta
        return ClientCall(
            stream=RequestStream(ctx),
            connection=channel,
            progress=ctx.session.report_progress if wants_progress else None,
        )

    def _listen_channel(self, key: SessionKey) -> ListenChannel:
        channel = self._listeners.get(key)
        if channel is None:
            channel = self._listeners[key] = ListenChannel()
        return channel

    async def _connection_ended(self, connection: Connection, key: SessionKey) -> None:
        self._connections.pop(id(connection), None)
        self._engine.named.forget_client(f"connection {key.name}")
        await self._engine.end_session(key)

    async def _answer(
        self,
        ctx: Context,
        forward: Callable[[ClientCall], Awaitable[dict[str, Any]]],
        *,
        rounds: types.InputResponseRequestParams | None = None,
    ) -> dict[str, Any]:
        """Run a forwarded request as work in flight (see `drain`), cancelled if its client hangs up (see
        `hangup`), as `input_required` rounds for a 2026-07-28 client where the method allows (see `rounds`);
        translate our errors once, and shape the result for the client's era."""
        receive = hang_up_source(ctx)
        is_modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS

        async def run() -> dict[str, Any]:
            if rounds is not None and is_modern:
                # A 2026-07-28 client is asked by `input_required` rounds of its own request (see `rounds`).
                call = self._client_call(ctx)
                return await self.rounds.run(
                    principal=self._principal(ctx).name,
                    stream=call.stream,
                    input_responses=rounds.input_responses,
                    request_state=rounds.request_state,
                    start=lambda channel: forward(replace(call, stream=channel)),
                )
            call = self._client_call(ctx)
            return await (forward(call) if receive is None else unless_client_hangs_up(receive, lambda: forward(call)))

        try:
            with self.drain.request():
                try:
                    result = await run()
                except (UnknownToolError, UnknownPromptError, UnknownResourceError):
                    # Routing fails before anything is sent: a name from an upstream still starting may yet come.
                    if not self._engine.is_settling:
                        raise
                    await self._engine.settled()
                    result = await run()
        except ProxyError as error:
            raise to_mcp_error(error) from None
        if is_modern:
            # Upstreams speak the handshake era; a 2026-07-28 result must say it is complete, and a cacheable
            # one carries freshness hints: the upstream's own where it gave them, else "stale at once, yours".
            result.setdefault("resultType", "complete")
            if ctx.method in CACHEABLE_METHODS and result["resultType"] == "complete":
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
        return result

    async def _announce_catalog_changed(self) -> None:
        capabilities = self._engine.capabilities()
        for listener in list(self._listeners.values()):
            await listener.publish(catalog_events(capabilities))
        notices: list[types.ServerNotification] = [types.ToolListChangedNotification()]
        if capabilities.prompts is not None:
            notices.append(types.PromptListChangedNotification())
        if capabilities.resources is not None:
            notices.append(types.ResourceListChangedNotification())
        for connection in list(self._connections.values()):
            channel = ConnectionStream(connection)
            with anyio.move_on_after(_NOTIFY_SECONDS):
                for notice in notices:
                    await channel.notify(notice)
