"""The MCP face of the proxy: a low-level `Server` whose handlers are thin calls into `ProxyEngine`.

What this adapter owns is what only the wire knows: which session key a
request belongs to and how to reach the client that sent it (see `downstream`),
how a forwarded request runs (as work in flight, cancelled on hang-up), and how
our errors become MCP errors (`errors.to_mcp_error`).

Protocol eras. Both are served, and `server/discover` offers both (the -32022
error lists the 2026-07-28 versions, all of which discover offers too); each
era keeps state (see `downstream` for how its requests are keyed). An
upstream's questions (sampling, elicitation, roots) reach a 2026-07-28 client
as `input_required` rounds (see `rounds`), and what its sessions say outside a
call reaches its `subscriptions/listen` streams (see `listen`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import anyio
from mcp import MCPError, types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from mcp_types.methods import CACHEABLE_METHODS
from pydantic import BaseModel

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.catalog import Catalog
from mcpstore_proxy.client_capabilities import declared_by
from mcpstore_proxy.downstream import NOTIFY_SECONDS, REQUEST_SCOPE, Caller, Downstream
from mcpstore_proxy.drain import Drain
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import (
    ProxyError,
    ShuttingDownError,
    UnknownPromptError,
    UnknownResourceError,
    UnknownToolError,
    to_mcp_error,
)
from mcpstore_proxy.gate import AGENT_HEADER
from mcpstore_proxy.hangup import hang_up_source, unless_client_hangs_up
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.listings import LISTINGS, ShapedListings, WireListing, listing_result
from mcpstore_proxy.operations import ObservedOperations, OperationObserver, OperationTracer, note_tool
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.request_headers import EXISTING_SESSION_HEADER
from mcpstore_proxy.rounds import InputRounds, Unaskable

__all__ = ["AGENT_HEADER", "EXISTING_SESSION_HEADER", "REQUEST_SCOPE", "ProxyServer"]

logger = logging.getLogger(__name__)

Context = ServerRequestContext[Any, Any]
_ResultT = TypeVar("_ResultT", bound=BaseModel)


class ProxyServer(Server[Any]):
    """Serves the engine's merged offer to one kind of downstream transport (HTTP, SSE or stdio)."""

    def __init__(
        self,
        engine: ProxyEngine,
        *,
        stdio: bool = False,
        drain: Drain | None = None,
        observer: OperationObserver | None = None,
    ) -> None:
        """`observer` (the app's metrics) hears of every request answered (see `operations`).

        Raises:
            ConfigError: `tracing: true`, but OpenTelemetry's SDK is not installed.
        """
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
        # The SDK's OpenTelemetry span per message is measurable per-call cost: spans come only with `tracing: true`.
        self.middleware.clear()
        tracer = self._tracer = _start_tracing() if engine.settings.tracing else None
        self.traces = tracer is not None
        """Whether each request gets a span (`tracing: true`)."""
        if observer is not None or tracer is not None:
            principal_of = self._principal_name if engine.settings.metrics_per_principal else None
            self.middleware.append(ObservedOperations(observer, tracer, principal_of))
        self.middleware.append(self._adopting)
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
        self.drain = drain or Drain(engine.events)
        self.downstream = Downstream(engine, stdio=stdio)
        """Which session key each request belongs to, and how to reach the client that sent it (an attribute, not
        a property: the lanes read it for every call)."""
        # The SDK checks a 2026-07-28 call's `Mcp-Param-*` headers against the tool's schema; without this it runs
        # the whole tools/list handler for every such call to find that schema.
        self.get_tool_input_schema = self.downstream.input_schema
        self._listings = ShapedListings(self.server_info_stamp)
        self.rounds = InputRounds(engine.clock)
        """The 2026-07-28 multi-round exchanges in progress; whoever serves this server enters `rounds.running()`."""
        engine.add_listener(self.downstream.announce_catalog_changed)

    def _key(self, ctx: Context) -> SessionKey:
        return self.downstream.key(Caller.of(ctx))

    def _principal_name(self, ctx: Context) -> str:
        return self.downstream.principal(Caller.of(ctx)).name

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

    async def listing(self, caller: Caller, method: str) -> WireListing:
        """A listing's result (`method` in `LISTINGS`) for the fast lane, on the wire: shaped (validated and sieved
        for the caller's protocol version, as the SDK shapes results) once per catalog, method and version.

        Raises:
            MCPError: the key is malformed or over its limit.
        """
        await self._engine.startup.settled()
        try:
            catalog = self._engine.catalog_for(self.downstream.key(caller))
        except ProxyError as error:
            raise to_mcp_error(error) from None
        return self._listings.wire(catalog, method, caller.protocol_version)

    async def _list_tools(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return await self._listing_of(ctx, types.ListToolsResult)

    async def _list_prompts(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return await self._listing_of(ctx, types.ListPromptsResult)

    async def _list_resources(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return await self._listing_of(ctx, types.ListResourcesResult)

    async def _list_resource_templates(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return await self._listing_of(ctx, types.ListResourceTemplatesResult)

    async def _listing_of(self, ctx: Context, result_type: type[_ResultT]) -> _ResultT:
        result = listing_result(ctx.method, await self._catalog(ctx))
        assert isinstance(result, result_type)
        return result

    async def _adopting(self, ctx: Context, call_next: CallNext) -> HandlerResult:
        """Adopt a connection as its `initialize` is answered, so that its next request finds it adopted (the
        fast lane takes only adopted sessions' calls), whether or not `notifications/initialized` came first."""
        result = await call_next(ctx)
        if ctx.method == "initialize":
            caller = Caller.of(ctx)
            self.downstream.adopt(caller._replace(protocol_version=caller.connection.protocol_version))
        return result

    async def _cached_listing(self, ctx: Context, call_next: CallNext) -> HandlerResult:
        """Answer a listing with the result the rest of the chain shaped for its catalog the first time (see
        `listings`)."""
        if ctx.method not in LISTINGS:
            return await call_next(ctx)
        return await self._listings.result(
            await self._catalog(ctx), ctx.method, ctx.protocol_version, lambda: call_next(ctx)
        )

    async def _catalog(self, ctx: Context) -> Catalog:
        await self._engine.startup.settled()
        try:
            return self._engine.catalog_for(self._key(ctx))
        except ProxyError as error:
            raise to_mcp_error(error) from None

    # Requests that run in the key's upstream session.

    async def _call_tool(self, ctx: Context, params: types.CallToolRequestParams) -> dict[str, Any]:
        caller = Caller.of(ctx)
        return await self._answer(
            ctx, lambda call: self.call_tool(caller, params.name, params.arguments, call), rounds=params
        )

    def call_tool(
        self, caller: Caller, name: str, arguments: dict[str, Any] | None, call: ClientCall
    ) -> Awaitable[dict[str, Any]]:
        """Forward a tools/call: route the exposed tool `name`, in the session its key (or its session argument)
        names. The SDK's handler and the fast lane (see `lane`) both come here, and await it at once: routing is
        done before it gives the forward to await (its coroutine: a frame less per call).

        Raises:
            ProxyError: routing or the upstream failed (`forwarded` translates it).
        """
        base_key = self.downstream.key(caller)
        if call.connection is None:
            # A 2026-07-28 call from the lane: what its sessions say outside a call goes to its key's listen streams.
            call.connection = self.downstream.listen_channel(base_key)
        route = self._engine.tool_route(base_key, name)
        note_tool(name)
        arguments = dict(arguments or {})
        argument = route.session_argument
        named = arguments.pop(argument, None) if argument is not None else None
        # Without a session argument, the key is the one the request already resolved to.
        key = base_key if named is None else self.downstream.named_key(caller, base_key, named, argument_name=argument)
        is_other_key = key is not base_key and key != base_key
        if is_other_key:
            # The tool exists in the connection's view; the named session may just never have listed its own.
            with contextlib.suppress(UnknownToolError):
                route = self._engine.tool_route(key, name)
        if key.is_explicit and caller.header(EXISTING_SESSION_HEADER) == "1":
            self._engine.records.require(key)
        if is_other_key:  # `key()` admitted the base key
            self.downstream.admit(caller, key)
        return self._engine.call_tool(key, route, arguments, call)

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
        channel = self.downstream.listen_channel(key)
        call = ClientCall(stream=channel, connection=channel)
        uris = list(params.notifications.resource_subscriptions or ())
        for uri in uris:
            with contextlib.suppress(ProxyError, MCPError):  # like any subscription, one that never fires
                await self._engine.subscribe(key, uri, call, subscribe=True)
        try:
            return await channel.handler(ctx, params)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(NOTIFY_SECONDS):
                for uri in uris:
                    with contextlib.suppress(ProxyError, MCPError):
                        await self._engine.subscribe(key, uri, call, subscribe=False)

    async def _initialized(self, ctx: Context, params: types.NotificationParams) -> None:
        self.downstream.initialized(Caller.of(ctx))

    async def _roots_changed(self, ctx: Context, params: types.NotificationParams) -> None:
        with contextlib.suppress(ProxyError):
            key = self._key(ctx)
            if not key.is_ephemeral:
                await self._engine.roots_changed(key)

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
            call = self.downstream.client_call(ctx)
            if rounds is not None and is_modern:
                if declared_by(call.stream.capabilities) or rounds.request_state is not None:
                    # A 2026-07-28 client is asked by `input_required` rounds of its own request (see `rounds`).
                    return await self.rounds.run(
                        principal=self._principal_name(ctx),
                        stream=call.stream,
                        input_responses=rounds.input_responses,
                        request_state=rounds.request_state,
                        start=lambda channel: forward(replace(call, stream=channel)),
                    )
                # Nothing can be asked of it: the call runs in the request's own task, which its hang-up cancels.
                return await forward(replace(call, stream=Unaskable(call.stream)))
            return await (forward(call) if receive is None else unless_client_hangs_up(receive, lambda: forward(call)))

        result = await self.forwarded(run)
        if is_modern:
            # Upstreams speak the handshake era; a 2026-07-28 result must say it is complete, and a cacheable
            # one carries freshness hints: the upstream's own where it gave them, else "stale at once, yours".
            result.setdefault("resultType", "complete")
            if ctx.method in CACHEABLE_METHODS and result["resultType"] == "complete":
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
        return result

    async def forwarded(self, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run a forwarded request (`routed`) as work in flight (see `drain`).

        Raises:
            MCPError: what the client is answered.
        """
        try:
            with self.drain.request():
                return await self.routed(run)
        except ShuttingDownError as error:
            raise to_mcp_error(error) from None

    async def routed(self, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run a forwarded request; once more if it named something an upstream still starting may yet offer;
        our errors translated, once, to MCP errors. The caller holds it in flight (`forwarded`, or the fast lane,
        which cancels the drain's own scope for its client).

        Raises:
            MCPError: what the client is answered.
        """
        try:
            try:
                return await run()
            except (UnknownToolError, UnknownPromptError, UnknownResourceError):
                # Routing fails before anything is sent: a name from an upstream still starting may yet come.
                if not self._engine.startup.is_settling:
                    raise
                await self._engine.startup.settled()
                return await run()
        except ProxyError as error:
            raise to_mcp_error(error) from None


def _start_tracing() -> OperationTracer:
    """Imported only when asked for: without `tracing: true`, OpenTelemetry's SDK is never loaded."""
    from mcpstore_proxy.tracing import start_tracing

    return start_tracing()
