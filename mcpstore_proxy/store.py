"""`MCPStore`: MCPStore's session API, over an embedded engine or a running proxy.

    store = MCPStore.setup_store()                                  # embedded: this process runs the upstreams
    store = MCPStore.setup_store(url="http://127.0.0.1:8765")       # remote: a running mcpstore-proxy does

`for_store()` is the store's scope; `for_agent(id)` an agent's, whose services
and sessions are its own. Every call has an `_async` twin. Which session a
scope-level call (`use_tool`, `list_tools`, `for_langchain`) runs in is, in
order: the innermost `with_session` block of this thread or task, else the
scope's automatic session after `session_auto()`, else a one-off session for
that call. Both live in context variables, so threads and tasks never cross.
"""

from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from mcp import types

from mcpstore_proxy.backends import Backend
from mcpstore_proxy.backends.embedded import embedded_backend
from mcpstore_proxy.backends.remote import remote_backend
from mcpstore_proxy.bridge import LoopThread
from mcpstore_proxy.config import CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH, ProxySettings, load_settings
from mcpstore_proxy.control import ServiceInfo, ToolInfo
from mcpstore_proxy.keys import STORE_SCOPE, checked_agent, checked_session_name
from mcpstore_proxy.session import CURRENT_SESSION, Session, SessionBlock, checked_result

if TYPE_CHECKING:
    from mcpstore_proxy.langchain import LangChainAdapter

__all__ = ["AUTO_SESSION_ID", "MCPStore", "StoreContext"]

AUTO_SESSION_ID: Final = "auto"
"""The id of a scope's automatic session (`session_auto()`)."""

_AUTO_SCOPES: ContextVar[frozenset[tuple[int, str]]] = ContextVar("mcpstore_proxy.auto_scopes", default=frozenset())
_DEFAULT_WAIT_SECONDS: Final = 30.0
_OPEN_STORES: weakref.WeakSet[MCPStore] = weakref.WeakSet()


class MCPStore:
    """A store of MCP services and their sessions; `setup_store()` makes one."""

    def __init__(self, bridge: LoopThread, backend: Backend, mode: Literal["embedded", "remote"]) -> None:
        self.bridge = bridge
        self.backend = backend
        self.mode = mode
        self._is_closed = False
        _OPEN_STORES.add(self)

    def __repr__(self) -> str:
        return f"<MCPStore {self.mode}{' closed' if self._is_closed else ''}>"

    @classmethod
    def setup_store(
        cls,
        url: str | None = None,
        *,
        config: str | Path | None = None,
        token: str | None = None,
        session_header: str = "X-MCPStore-Session",
    ) -> MCPStore:
        """An embedded store (`config`, else $MCPSTORE_PROXY_CONFIG, else config/proxy.yaml when present),
        or, given `url`, a store backed by the proxy running there (`token`: its admin token, if it needs one).

        Raises:
            ConfigError: the config file is invalid, or a configured tool name collides.
        """
        bridge = LoopThread()
        try:
            if url is None:
                backend: Backend = bridge.enter(embedded_backend(_embedded_settings(config)))
                return cls(bridge, backend, "embedded")
            backend = bridge.enter(remote_backend(url, token=token, session_header=session_header))
            return cls(bridge, backend, "remote")
        except BaseException:
            bridge.close()
            raise

    def for_store(self) -> StoreContext:
        """The store's own scope: services everyone sees, and the store's sessions."""
        return StoreContext(self, STORE_SCOPE)

    def for_agent(self, agent_id: str) -> StoreContext:
        """An agent's scope: the store's services plus the agent's own, and sessions of its own."""
        if not agent_id:
            raise ValueError("an agent id must not be empty; use for_store() for the store's own scope")
        return StoreContext(self, checked_agent(agent_id))

    def close(self) -> None:
        """Close every session and stop every upstream this store started (embedded), or disconnect (remote)."""
        if not self._is_closed:
            self._is_closed = True
            self.bridge.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class StoreContext:
    """One scope of a store: the store's (`for_store()`) or an agent's (`for_agent(id)`)."""

    def __init__(self, store: MCPStore, agent: str) -> None:
        self._store = store
        self._agent = agent
        self._bridge = store.bridge
        self._backend = store.backend

    def __repr__(self) -> str:
        return f"<StoreContext {'agent ' + repr(self._agent) if self._agent else 'store'}>"

    @property
    def agent_id(self) -> str | None:
        return self._agent or None

    @property
    def store(self) -> MCPStore:
        return self._store

    # Services.

    def add_service(self, config: Mapping[str, Any] | None = None, /, **entry: Any) -> Self:
        """Add a service: `{"name": ..., <mcpServers entry>}`, or `{"mcpServers": {...}}` for several.

        The same entry again under a name this scope already holds is a no-op, so a script can run twice where
        services persist.

        Raises:
            ConfigError: a bad entry, or the name is taken by a different entry (see `update_service`).
        """
        self._bridge.call(self._backend.add_services, self._agent, {**(config or {}), **entry})
        return self

    async def add_service_async(self, config: Mapping[str, Any] | None = None, /, **entry: Any) -> Self:
        await self._bridge.call_async(self._backend.add_services, self._agent, {**(config or {}), **entry})
        return self

    def update_service(
        self, name_or_config: str | Mapping[str, Any], config: Mapping[str, Any] | None = None, /, **entry: Any
    ) -> Self:
        """Replace a service's entry: `update_service("browser", {"url": ...})` (MCPStore's form), or the
        shapes `add_service` takes. Its sessions start afresh with the new entry; an unchanged entry is a no-op.

        Raises:
            UnknownServiceError: no such service in this scope.
            ConfigError: a bad entry, or a service from the config file (change it there).
        """
        self._bridge.call(self._backend.update_services, self._agent, _payload(name_or_config, config, entry))
        return self

    async def update_service_async(
        self, name_or_config: str | Mapping[str, Any], config: Mapping[str, Any] | None = None, /, **entry: Any
    ) -> Self:
        payload = _payload(name_or_config, config, entry)
        await self._bridge.call_async(self._backend.update_services, self._agent, payload)
        return self

    def remove_service(self, name: str) -> Self:
        self._bridge.call(self._backend.remove_service, self._agent, name)
        return self

    async def remove_service_async(self, name: str) -> Self:
        await self._bridge.call_async(self._backend.remove_service, self._agent, name)
        return self

    def restart_service(self, name: str) -> ServiceInfo:
        return self._bridge.call(self._backend.restart_service, self._agent, name)

    async def restart_service_async(self, name: str) -> ServiceInfo:
        return await self._bridge.call_async(self._backend.restart_service, self._agent, name)

    def wait_service(self, name: str, timeout: float = _DEFAULT_WAIT_SECONDS) -> ServiceInfo:
        """Wait until the service is ready, through failed starts and their retries (it may be starting alongside).

        Raises:
            UpstreamStartError: it is not ready within `timeout` seconds (its last failure, if it failed), or it
                stopped.
        """
        return self._bridge.call(self._backend.wait_service, self._agent, name, timeout)

    async def wait_service_async(self, name: str, timeout: float = _DEFAULT_WAIT_SECONDS) -> ServiceInfo:
        return await self._bridge.call_async(self._backend.wait_service, self._agent, name, timeout)

    def list_services(self) -> list[ServiceInfo]:
        return self._bridge.call(self._backend.list_services, self._agent)

    async def list_services_async(self) -> list[ServiceInfo]:
        return await self._bridge.call_async(self._backend.list_services, self._agent)

    def service_status(self, name: str) -> ServiceInfo:
        return self._bridge.call(self._backend.service_status, self._agent, name)

    async def service_status_async(self, name: str) -> ServiceInfo:
        return await self._bridge.call_async(self._backend.service_status, self._agent, name)

    # Tools, in the current session.

    def list_tools(self) -> list[ToolInfo]:
        return self._bridge.call(self._backend.list_tools, self._agent, self.current_session_id())

    async def list_tools_async(self) -> list[ToolInfo]:
        return await self._bridge.call_async(self._backend.list_tools, self._agent, self.current_session_id())

    def use_tool(
        self, name: str, arguments: dict[str, Any] | None = None, *, raise_on_error: bool = False
    ) -> types.CallToolResult:
        """Call a tool in the current session. A tool's error answer (`isError: true`) is returned and logged.

        Raises:
            ToolError: the tool answered `isError: true`, and `raise_on_error` asks for an exception.
        """
        session, opens = self.session_target()
        result = self._bridge.call(self._backend.call_tool, self._agent, session, name, arguments, opens)
        return checked_result(name, result, raise_on_error=raise_on_error)

    async def use_tool_async(
        self, name: str, arguments: dict[str, Any] | None = None, *, raise_on_error: bool = False
    ) -> types.CallToolResult:
        session, opens = self.session_target()
        call_tool = self._backend.call_tool
        result = await self._bridge.call_async(call_tool, self._agent, session, name, arguments, opens)
        return checked_result(name, result, raise_on_error=raise_on_error)

    call_tool = use_tool
    call_tool_async = use_tool_async

    def current_session_id(self) -> str | None:
        """The session scope-level calls run in now: the `with_session` block's, the automatic one, or none."""
        return self.session_target()[0]

    def session_target(self) -> tuple[str | None, bool]:
        """The current session, and whether a call may (re)open it: only the automatic session opens by itself;
        a closed `with_session` or `create_session` session raises `SessionClosedError`."""
        current = CURRENT_SESSION.get()
        if current is not None and current.store is self._store and current.agent_id == self.agent_id:
            return current.session_id, False
        if (id(self._store), self._agent) in _AUTO_SCOPES.get():
            return AUTO_SESSION_ID, True
        return None, False

    # Sessions.

    def with_session(self, session_id: str) -> Session:
        """`with ... as s:`: the session (opened if new) is the current one for the block, and closed after it."""
        return Session(self._store, self._agent, checked_session_name(session_id, "a session id"))

    def with_session_async(self, session_id: str) -> SessionBlock:
        """`async with ... as s:`, like `with_session`; `async with await ... as s:` (MCPStore 1.x's form) too."""
        return SessionBlock(self.with_session(session_id))

    def create_session(self, session_id: str) -> Session:
        """Open a session that lives until `close_session()` (or until it expires)."""
        return self.with_session(session_id).open()

    async def create_session_async(self, session_id: str) -> Session:
        return await self.with_session(session_id).open_async()

    def find_session(self, session_id: str) -> Session | None:
        found = self._bridge.call(self._backend.find_session, self._agent, session_id)
        return Session(self._store, self._agent, session_id) if found is not None else None

    async def find_session_async(self, session_id: str) -> Session | None:
        found = await self._bridge.call_async(self._backend.find_session, self._agent, session_id)
        return Session(self._store, self._agent, session_id) if found is not None else None

    def list_sessions(self) -> list[Session]:
        infos = self._bridge.call(self._backend.list_sessions, self._agent)
        return [Session(self._store, self._agent, info.session_id) for info in infos]

    async def list_sessions_async(self) -> list[Session]:
        infos = await self._bridge.call_async(self._backend.list_sessions, self._agent)
        return [Session(self._store, self._agent, info.session_id) for info in infos]

    def session_auto(self) -> Self:
        """From now on (in this thread or task), scope-level calls reuse one automatic session."""
        _AUTO_SCOPES.set(_AUTO_SCOPES.get() | {(id(self._store), self._agent)})
        return self

    def session_manual(self) -> Self:
        """Stop the automatic session (it stays open until closed or expired); calls run one-off again."""
        _AUTO_SCOPES.set(_AUTO_SCOPES.get() - {(id(self._store), self._agent)})
        return self

    async def session_auto_async(self) -> Self:
        return self.session_auto()

    async def session_manual_async(self) -> Self:
        return self.session_manual()

    def auto_session(self) -> Session:
        """A handle on this scope's automatic session."""
        return Session(self._store, self._agent, AUTO_SESSION_ID)

    # Integrations.

    def for_langchain(self) -> LangChainAdapter:
        from mcpstore_proxy.langchain import LangChainAdapter

        return LangChainAdapter(self)


def _payload(
    name_or_config: str | Mapping[str, Any], config: Mapping[str, Any] | None, entry: Mapping[str, Any]
) -> dict[str, Any]:
    """`update_service`'s arguments as the payload `add_service` takes."""
    if isinstance(name_or_config, str):
        return {**(config or {}), **entry, "name": name_or_config}
    return {**name_or_config, **(config or {}), **entry}


def _embedded_settings(config: str | Path | None) -> ProxySettings:
    if config is not None:
        return load_settings(Path(config))
    if os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH.is_file():
        return load_settings()
    return ProxySettings()


@atexit.register
def _close_open_stores() -> None:
    """Stores left open at exit still stop their upstream processes."""
    for store in list(_OPEN_STORES):
        store.close()
