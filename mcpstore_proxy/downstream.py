"""The clients behind the MCP face: which session key a request belongs to, and how to reach whoever sent it.

Handshake-era clients (2024-11-05 … 2025-11-25) are keyed by their connection,
adopted on first sight; its end (its `Connection.exit_stack`, unwound by the
SDK on DELETE, idle expiry, EOF or shutdown) closes every upstream session
keyed by it. A 2026-07-28 request has no connection: it is served with its
explicit key (header or argument), else in its principal's own session (one
per principal and agent scope), so a keyless client keeps its state across
calls. Over stdio the pipe itself is the session.

A request reaches its client through `ClientChannel`s for the relay: its
request's stream, and its connection's stream or, for a 2026-07-28 client, the
key's `subscriptions/listen` streams.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Final, NamedTuple

import anyio
from mcp import types
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import Scope

from mcpstore_proxy.channels import ConnectionStream, RequestStream
from mcpstore_proxy.compat import downstream_connection, legacy_session_named
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ProxyError
from mcpstore_proxy.gate import agent_of, principal_of
from mcpstore_proxy.interned import Interned
from mcpstore_proxy.keys import STORE_SCOPE, SessionKey, checked_session_name, resolve_session_key
from mcpstore_proxy.listen import ListenChannel, catalog_events
from mcpstore_proxy.principals import ANONYMOUS, LOCAL, Principal
from mcpstore_proxy.relay import ClientCall, ClientChannel
from mcpstore_proxy.request_headers import first_value

__all__ = ["NOTIFY_SECONDS", "REQUEST_SCOPE", "Caller", "Downstream"]

Context = ServerRequestContext[Any, Any]

REQUEST_SCOPE: Final[ContextVar[Scope | None]] = ContextVar("mcpstore_proxy.request_scope", default=None)
"""The ASGI scope of the 2026-07-28 HTTP request being served (set by the app as it hands the request on), for the
schema lookup of its `Mcp-Param` headers (`Downstream.input_schema`), its one reader, in the request's own task."""
NOTIFY_SECONDS: Final = 1.0
"""How long a notice to a client, or its shielded clean-up, may take before it is given up."""
_KEY_STATE: Final = "mcpstore_proxy.session_key"
_CHANNEL_STATE: Final = "mcpstore_proxy.channel"
_LEGACY_STATE: Final = "mcpstore_proxy.legacy_session"
_KEYS_REMEMBERED: Final = 4096
_CLIENT_PARAMS: Final = Interned[types.InitializeRequestParams](64)
"""The clients' `initialize` parameters, each kept once however many connections sent them (see `interned`)."""


class Caller(NamedTuple):
    """Who sent a request, as far as session keys go: its HTTP request (None over stdio), its connection and its
    protocol era. Built from the SDK's request context (`of`), or by the fast lane (see `lane`) without one (a
    named tuple: one is made for every request, at half a frozen dataclass's cost)."""

    scope: Scope | None
    connection: Connection
    protocol_version: str

    @classmethod
    def of(cls, ctx: Context) -> Caller:
        scope = ctx.request.scope if ctx.request is not None else None
        return cls(scope, downstream_connection(ctx), ctx.protocol_version)

    def header(self, name: str) -> str | None:
        """A request header's value (`name` in lower case); None over stdio or when absent."""
        return None if self.scope is None else _header_value(self.scope, name.encode("latin-1"))


def _header_value(scope: Scope, name: bytes) -> str | None:
    """The first value of the request header `name` (in lower case, as ASGI gives names), or None."""
    value = first_value(scope, name)
    return value.decode("latin-1") if value is not None else None


class Downstream:
    """The session keys and client channels of one `ProxyServer`'s requests."""

    def __init__(self, engine: ProxyEngine, *, stdio: bool = False) -> None:
        self._engine = engine
        self._argument = engine.settings.session_argument
        self._header_name = engine.settings.session_header.lower().encode("latin-1")
        self._stdio_key = SessionKey.connection("stdio") if stdio else None
        self._connections: dict[int, Connection] = {}
        self._http_sessions: dict[str, Connection] = {}
        self._legacy_sessions: dict[str, Connection] = {}
        self._pipe: Connection | None = None
        self._keys: dict[tuple[str, str, str], SessionKey] = {}
        """Keys resolved before, by (session header value, agent, principal), a principal's own under an empty
        header value (never a valid one): a client names the same session call after call, and keys are values."""
        # Weak: a key's channel lives while its listen streams or its upstream sessions (whose relay owner it is) do.
        self._listeners: weakref.WeakValueDictionary[SessionKey, ListenChannel] = weakref.WeakValueDictionary()

    def __repr__(self) -> str:
        return f"<Downstream {len(self._connections)} connections, {len(self._listeners)} listen channels>"

    # Keys.

    def key(self, caller: Caller) -> SessionKey:
        """The key of a request without a session argument: header, then connection, else ephemeral.

        Raises:
            InvalidSessionKeyError: the agent id or the session header is malformed.
            SessionLimitError: it names a session that would take the client past its limit.
        """
        scope = caller.scope
        header = None if scope is None else _header_value(scope, self._header_name)
        if header is None:
            return self.adopt(caller)  # what `resolve_session_key` picks, and never a named session to admit
        key = self._named(header, self.agent(caller), self.principal(caller).name)
        self.admit(caller, key)
        return key

    def _principals_own(self, agent: str, principal: str) -> SessionKey:
        """The principal's own session in the agent scope (`SessionKey.for_principal`), remembered (`_keys`)."""
        key = self._keys.get(("", agent, principal))
        if key is None:
            key = self._remember(("", agent, principal), SessionKey.connection("", agent, principal).for_principal())
        return key

    def _named(self, header: str, agent: str, principal: str) -> SessionKey:
        """The session the session header names (`resolve_session_key`'s explicit key), remembered (`_keys`).

        Raises:
            InvalidSessionKeyError: the header's value is malformed.
        """
        key = self._keys.get((header, agent, principal))
        if key is None:
            name = checked_session_name(header, f"the {self._engine.settings.session_header} header")
            key = self._remember((header, agent, principal), SessionKey.explicit(name, agent, principal))
        return key

    def _remember(self, resolved_from: tuple[str, str, str], key: SessionKey) -> SessionKey:
        if len(self._keys) >= _KEYS_REMEMBERED:
            self._keys.clear()
        self._keys[resolved_from] = key
        return key

    def named_key(self, caller: Caller, base: SessionKey, named: Any, *, argument_name: str | None) -> SessionKey:
        """The key of a tool call that may name its session by argument `argument_name` (None: the store's own),
        else by the header `base` was resolved from; not yet admitted (see `admit`).

        Raises:
            InvalidSessionKeyError: the session argument is malformed.
        """
        return resolve_session_key(
            named,
            base.name if base.is_explicit else None,
            self.adopt(caller),
            argument_name=argument_name or self._argument,
            header_name=self._engine.settings.session_header,
            agent=base.agent,
            principal=base.principal,
        )

    def admit(self, caller: Caller, key: SessionKey) -> None:
        """Count a named session against the client that uses it: its principal, where one is proved; else its
        connection, or without one (a 2026-07-28 request over HTTP) its address."""
        if not key.is_explicit:
            return
        principal = self.principal(caller)
        if principal not in (ANONYMOUS, LOCAL):
            self._engine.named.admit(key, str(principal))
            return
        connection = self.adopt(caller)
        if connection.kind == "connection":
            client = f"connection {connection.name}"
        else:
            peer = caller.scope.get("client") if caller.scope is not None else None
            client = f"address {peer[0] if peer else 'unknown'}"
        self._engine.named.admit(key, client)

    def agent(self, caller: Caller) -> str:
        """The agent scope of a request: the `/agents/{id}/mcp` path, else the `X-MCPStore-Agent` header."""
        return agent_of(caller.scope) if caller.scope is not None else STORE_SCOPE

    def principal(self, caller: Caller) -> Principal:
        """Who the request proved to be, at the gate (the local principal over stdio)."""
        return principal_of(caller.scope)

    def adopt(self, caller: Caller) -> SessionKey:
        """The connection's own session key, registering the connection on first sight.

        Registration hooks the connection's end (DELETE, idle expiry, EOF,
        shutdown) to close every upstream session keyed by it.
        """
        if caller.protocol_version in MODERN_PROTOCOL_VERSIONS:
            # Over HTTP a 2026-07-28 request has no connection: without a key, it is its principal's.
            if self._stdio_key is not None:
                return self._stdio_key
            return self._principals_own(self.agent(caller), self.principal(caller).name)
        connection = caller.connection
        key: SessionKey | None = connection.state.get(_KEY_STATE)
        if key is not None:
            return key
        principal = self.principal(caller).name
        key = SessionKey.connection(connection.session_id or secrets.token_hex(16), self.agent(caller), principal)
        connection.state[_KEY_STATE] = key
        connection.state[_CHANNEL_STATE] = ConnectionStream(connection)
        self._connections[id(connection)] = connection
        if connection.session_id is not None:
            self._http_sessions[connection.session_id] = connection
        elif self._stdio_key is not None:
            self._pipe = connection
        elif caller.scope is not None and (legacy := legacy_session_named(caller.scope)) is not None:
            self._legacy_sessions[legacy] = connection
            connection.state[_LEGACY_STATE] = legacy
        connection.exit_stack.push_async_callback(self._connection_ended, connection, key)
        return key

    def initialized(self, caller: Caller) -> None:
        """The client said its handshake is done (`notifications/initialized`): its connection is adopted, and
        keeps the copy of its `initialize` parameters that equal ones share (see `interned`): the SDK keeps them
        for the connection's whole life, and the clients of one kind send the same."""
        self.adopt(caller)
        connection = caller.connection
        params = connection.client_params
        if params is not None:
            shared = _CLIENT_PARAMS.get(params)
            if shared is not params:
                connection.client_params = shared  # the SDK's setter: its capabilities follow

    @property
    def tools_may_map_headers(self) -> bool:
        """False while no tool any request could see maps arguments to HTTP headers (see `input_schema`)."""
        return self._engine.views.maps_headers

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        """Tool `name`'s input schema as the HTTP request being served sees it (None: nothing to check)."""
        scope = REQUEST_SCOPE.get()
        if scope is None:
            return None
        try:
            agent, principal = agent_of(scope), principal_of(scope).name
            header = _header_value(scope, self._header_name)
            key = (
                self._named(header, agent, principal) if header is not None else self._principals_own(agent, principal)
            )
            tool = self._engine.catalog_for(key).listed_tool(name)
        except ProxyError:
            return None  # the request itself fails in a moment, with the same error
        return tool.input_schema if tool is not None else None

    # Channels.

    def adopted(self, session_id: str) -> Connection | None:
        """The Streamable HTTP connection with this `Mcp-Session-Id`, once it was adopted (its first request after
        `initialize`); None before, and once it has ended."""
        return self._http_sessions.get(session_id)

    def legacy(self, session: str) -> Connection | None:
        """The legacy HTTP+SSE connection of the session `session` (its id in hex), once it was adopted (see
        `legacy_sse`); None before, and once it has ended."""
        return self._legacy_sessions.get(session)

    @property
    def pipe(self) -> Connection | None:
        """The stdio client's handshake-era connection, once it was adopted (see `lane_messages`); None before, once
        it has ended, and for a 2026-07-28 client (whose requests the SDK answers) or over HTTP."""
        return self._pipe

    def connection_channel(self, caller: Caller) -> ClientChannel:
        """Where what a request's sessions say outside a call goes: its connection's stream or, for a 2026-07-28
        request (over HTTP or stdio), the key's listen streams, never unasked down the pipe."""
        channel: ClientChannel | None = caller.connection.state.get(_CHANNEL_STATE)
        return channel if channel is not None else self.listen_channel(self.key(caller))

    def client_call(self, ctx: Context) -> ClientCall:
        """How a forwarded request reaches its client: its request's stream, and its connection's (or key's)."""
        channel = self.connection_channel(Caller.of(ctx))
        wants_progress = ctx.meta is not None and "progress_token" in ctx.meta
        return ClientCall(
            stream=RequestStream(ctx),
            connection=channel,
            progress=ctx.session.report_progress if wants_progress else None,
        )

    def listen_channel(self, key: SessionKey) -> ListenChannel:
        """The key's `subscriptions/listen` streams, as one channel."""
        channel = self._listeners.get(key)
        if channel is None:
            channel = self._listeners[key] = ListenChannel()
        return channel

    async def announce_catalog_changed(self) -> None:
        """Tell every client that the lists changed: its listen streams, else its connection."""
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
            with anyio.move_on_after(NOTIFY_SECONDS):
                for notice in notices:
                    await channel.notify(notice)

    async def _connection_ended(self, connection: Connection, key: SessionKey) -> None:
        self._connections.pop(id(connection), None)
        if connection.session_id is not None:
            self._http_sessions.pop(connection.session_id, None)
        if connection is self._pipe:
            self._pipe = None
        legacy: str | None = connection.state.get(_LEGACY_STATE)
        if legacy is not None:
            self._legacy_sessions.pop(legacy, None)
        self._engine.named.forget_client(f"connection {key.name}")
        await self._engine.end_session(key)
