"""The proxy's core, independent of how clients reach it.

`ProxyEngine` runs every upstream (`UpstreamService`), merges what they offer
into catalogs, routes each request to the session its key holds, and ends
sessions when their keys end. The MCP server, the admin API and the SDK are
thin adapters over it.

Scopes. Services from the config, and services added to the store at run time,
are seen by everyone; a service added for an agent is seen by that agent only.
Every session key belongs to one agent scope, so two agents' sessions never meet.

Catalogs. A key sees its scope's catalog, until one of its own upstream sessions
announces a change of its tools, prompts or resources: from then on that key
sees a catalog of its own, in which that session's listings replace the
upstream's.

Named sessions (explicit keys) are recorded (`SessionRecords`): each use keeps
one alive for the idle timeout, `extend_session` moves its expiry, and an
expired one is closed.

Lifetime: `async with ProxyEngine(settings) as engine:` starts every upstream,
waits for each one's first start attempt, and builds the catalog strictly (a
name collision in the config is a start-up error). Leaving the block closes
every session and leaves no upstream process behind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Self, TypeVar, cast

import anyio
import anyio.abc
from mcp import types
from pydantic import BaseModel

from mcpstore_proxy.catalog import Catalog, CatalogSource, ToolRoute, build_catalog
from mcpstore_proxy.config import ProxySettings, UpstreamConfig, is_valid_name
from mcpstore_proxy.errors import ConfigError, ProxyError, UnknownServiceError, UpstreamStartError
from mcpstore_proxy.keys import STORE_SCOPE, SessionKey
from mcpstore_proxy.persistence import RuntimeServices
from mcpstore_proxy.pool import PoolHooks
from mcpstore_proxy.records import SessionRecord, SessionRecords
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.service import LISTING_KINDS, ServiceState, UpstreamService
from mcpstore_proxy.upstream import Listing, UpstreamSession

__all__ = ["ProxyEngine", "ServiceInfo"]

logger = logging.getLogger(__name__)

_SHUTDOWN_SECONDS: Final = 15.0
_T = TypeVar("_T")

CatalogListener = Callable[[], Coroutine[Any, Any, None]]


class ServiceInfo(BaseModel):
    """One service as `check`, `/healthz`, the admin API and the SDK see it."""

    name: str
    agent_id: str | None
    """The agent whose own service it is; None for the store's (everyone's)."""
    transport: str
    session_mode: str
    state: str
    tool_count: int
    client_sessions: int
    error: str | None
    from_config: bool


class ProxyEngine:
    """Upstreams, what they offer, and every client's persistent sessions with them."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.catalog = Catalog()
        self.records = SessionRecords(settings.session_idle_timeout_seconds)
        self._scopes: dict[str, dict[str, UpstreamService]] = {STORE_SCOPE: {}}
        self._runtime = RuntimeServices(settings.runtime_services_path)
        self._scope_catalogs: dict[str, Catalog] = {}
        self._key_catalogs: dict[SessionKey, Catalog] = {}
        self._keys_with_listings: set[SessionKey] = set()
        self._log_levels: dict[SessionKey, types.LoggingLevel] = {}
        self._hooks = PoolHooks(
            exposed_uri=self._exposed_uri, listings_changed=self._key_listings_changed, log_level=self._log_levels.get
        )
        for name, config in settings.enabled_servers.items():
            self._scopes[STORE_SCOPE][name] = self._new_service(name, config)
        self._listeners: list[CatalogListener] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._is_started = False

    def __repr__(self) -> str:
        count = sum(len(services) for services in self._scopes.values())
        return f"<ProxyEngine {count} upstreams in {len(self._scopes)} scopes, {self.catalog!r}>"

    async def __aenter__(self) -> Self:
        failure: ProxyError | None = None
        async with AsyncExitStack() as stack:
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._shutdown)
            try:
                await self._start()
            except ProxyError as error:
                # Raised after the task group has wound down, so it is not wrapped in an exception group.
                failure = error
            else:
                self._stack = stack.pop_all()
                return self
        assert failure is not None
        raise failure

    async def _start(self) -> None:
        assert self._task_group is not None
        configured = list(self._scopes[STORE_SCOPE].values())
        for service in configured:
            self._task_group.start_soon(service.maintain, name=f"upstream {service.name}")
        self._task_group.start_soon(self._expire_sessions, name="session reaper")
        for service in configured:
            await service.first_attempt_done.wait()
        self.catalog = self._build(STORE_SCOPE, None, strict=True)
        self._is_started = True
        added = [
            self._restore(scope, name, entry)
            for scope, entries in self._runtime.load().items()
            for name, entry in entries.items()
        ]
        for service in added:
            if service is not None:
                await service.first_attempt_done.wait()

    def _restore(self, scope: str, name: str, entry: Mapping[str, Any]) -> UpstreamService | None:
        try:
            return self._install(scope, name, UpstreamConfig.model_validate(entry))
        except (ProxyError, ValueError) as error:
            logger.warning("skipped the saved service '%s' (scope %r): %s", name, scope or "store", error)
            return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        return await stack.__aexit__(exc_type, exc, tb)

    async def _shutdown(self) -> None:
        """Close every session (bounded, in parallel), then cancel what is left."""
        with anyio.move_on_after(_SHUTDOWN_SECONDS, shield=True):
            async with anyio.create_task_group() as tg:
                for service in self._all_services():
                    tg.start_soon(service.close)
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    def add_listener(self, listener: CatalogListener) -> None:
        """Have `listener` awaited whenever a catalog changes after start-up."""
        self._listeners.append(listener)

    # Services.

    def services(self, agent: str = STORE_SCOPE) -> list[UpstreamService]:
        """Every service the scope sees: the store's (config first), then the agent's own."""
        own = list(self._scopes.get(agent, {}).values()) if agent != STORE_SCOPE else []
        return [*self._scopes[STORE_SCOPE].values(), *own]

    def service(self, agent: str, name: str) -> UpstreamService:
        """Raises UnknownServiceError when the scope sees no service called `name`."""
        service = self._scopes.get(agent, {}).get(name) or self._scopes[STORE_SCOPE].get(name)
        if service is None:
            known = ", ".join(repr(s.name) for s in self.services(agent)) or "none"
            raise UnknownServiceError(f"no service named {name!r} here (services: {known}); add it with add_service")
        return service

    def scope_of(self, agent: str, name: str) -> str:
        """Which scope the service `name`, as `agent` sees it, belongs to: the agent's own, or the store's."""
        return agent if agent != STORE_SCOPE and name in self._scopes.get(agent, {}) else STORE_SCOPE

    async def add_service(self, agent: str, name: str, config: UpstreamConfig) -> UpstreamService:
        """Start a service at run time, seen by `agent` only (or by everyone, for the store); it is saved.

        Raises:
            ConfigError: the name is malformed, or already taken where this scope would see it.
        """
        service = self._install(agent, name, config)
        self._runtime.put(agent, name, config.model_dump(exclude_defaults=True))
        return service

    def _install(self, agent: str, name: str, config: UpstreamConfig) -> UpstreamService:
        if not is_valid_name(name):
            raise ConfigError(f"service name {name!r} may use only letters, digits, '_', '.' and '-' (at most 64)")
        taken = name in self._scopes[STORE_SCOPE] or name in self._scopes.get(agent, {})
        if agent == STORE_SCOPE:
            taken = taken or any(name in services for services in self._scopes.values())
        if taken:
            raise ConfigError(f"a service named {name!r} already exists; remove it first, or pick another name")
        service = self._new_service(name, config)
        self._scopes.setdefault(agent, {})[name] = service
        assert self._task_group is not None
        self._task_group.start_soon(service.maintain, name=f"upstream {name}")
        logger.info("added service '%s'%s", name, f" for agent '{agent}'" if agent else "")
        return service

    async def remove_service(self, agent: str, name: str) -> None:
        """Stop a service added at run time, closing every session with it."""
        service = self.service(agent, name)
        scope = self.scope_of(agent, name)
        if scope == STORE_SCOPE and name in self.settings.enabled_servers:
            raise ConfigError(f"service {name!r} comes from the config file; remove it there and restart the proxy")
        del self._scopes[scope][name]
        self._runtime.remove(scope, name)
        for record in self.records:
            if name in record.bound:
                record.bound.remove(name)
        await service.close()
        self._catalog_changed()

    async def restart_service(self, agent: str, name: str) -> None:
        await self.service(agent, name).restart()

    async def wait_service(self, agent: str, name: str, timeout_seconds: float) -> UpstreamService:
        """Wait until the service is ready.

        Raises:
            UpstreamStartError: it failed, or is still not ready after `timeout_seconds`.
        """
        service = self.service(agent, name)
        with anyio.move_on_after(timeout_seconds):
            while service.state is not ServiceState.READY:
                if service.state is ServiceState.FAILED and service.error is not None:
                    raise service.error
                await service.state_changed()
            return service
        raise UpstreamStartError(
            name, f"service '{name}' is not ready after {timeout_seconds:g} s (state: {service.state.value})"
        )

    def capabilities(self) -> types.ServerCapabilities:
        """What the proxy can forward: the union of what its upstreams offer (tools always)."""
        offered = [s.capabilities for s in self._all_services() if s.capabilities is not None]
        resources = [c.resources for c in offered if c.resources is not None]
        return types.ServerCapabilities(
            tools=types.ToolsCapability(list_changed=True),
            prompts=types.PromptsCapability(list_changed=True) if any(c.prompts for c in offered) else None,
            resources=types.ResourcesCapability(subscribe=any(r.subscribe for r in resources), list_changed=True)
            if resources
            else None,
            logging=types.LoggingCapability() if any(c.logging is not None for c in offered) else None,
            completions=types.CompletionsCapability() if any(c.completions is not None for c in offered) else None,
        )

    # What a key sees.

    def catalog_for(self, key: SessionKey) -> Catalog:
        """The catalog `key` sees: its scope's, unless its own sessions list something of their own."""
        if key not in self._keys_with_listings:
            return self._scope_catalog(key.agent)
        catalog = self._key_catalogs.get(key)
        if catalog is None:
            catalog = self._key_catalogs[key] = self._build(key.agent, key, strict=False)
        return catalog

    def tool_route(self, key: SessionKey, name: str) -> ToolRoute:
        """Raises UnknownToolError when `key` sees no tool called `name`."""
        return self.catalog_for(key).tool(name)

    def _scope_catalog(self, agent: str) -> Catalog:
        if agent == STORE_SCOPE or not self._scopes.get(agent):
            return self.catalog
        catalog = self._scope_catalogs.get(agent)
        if catalog is None:
            catalog = self._scope_catalogs[agent] = self._build(agent, None, strict=False)
        return catalog

    # Requests.

    async def call_tool(
        self, key: SessionKey, route: ToolRoute, arguments: Mapping[str, Any] | None, call: ClientCall | None = None
    ) -> dict[str, Any]:
        """Call the routed tool in the session `key` holds with its upstream; the raw result, intact."""
        return await self._run(
            self.service(key.agent, route.upstream),
            key,
            call,
            lambda session: session.call_tool(route.tool, arguments, call),
        )

    async def get_prompt(
        self, key: SessionKey, params: types.GetPromptRequestParams, call: ClientCall | None = None
    ) -> dict[str, Any]:
        route = self.catalog_for(key).prompt(params.name)
        request = types.GetPromptRequest(params=params.model_copy(update={"name": route.prompt, "meta": None}))
        return await self._request(route.upstream, key, call, request)

    async def read_resource(
        self, key: SessionKey, params: types.ReadResourceRequestParams, call: ClientCall | None = None
    ) -> dict[str, Any]:
        route = self.catalog_for(key).resource(params.uri)
        request = types.ReadResourceRequest(params=params.model_copy(update={"uri": route.uri, "meta": None}))
        result = await self._request(route.upstream, key, call, request)
        if route.uri != params.uri:
            # Contents name the resource as the client asked for it.
            for content in cast(list[Any], result.get("contents", [])):
                if isinstance(content, dict) and cast(dict[str, Any], content).get("uri") == route.uri:
                    content["uri"] = params.uri
        return result

    async def subscribe(self, key: SessionKey, uri: str, call: ClientCall | None, *, subscribe: bool) -> None:
        route = self.catalog_for(key).resource(uri)
        await self.service(key.agent, route.upstream).subscribe(key, call, route.uri, subscribe=subscribe)

    async def complete(
        self, key: SessionKey, params: types.CompleteRequestParams, call: ClientCall | None = None
    ) -> dict[str, Any]:
        catalog = self.catalog_for(key)
        if isinstance(params.ref, types.PromptReference):
            prompt = catalog.prompt(params.ref.name)
            upstream, ref = prompt.upstream, params.ref.model_copy(update={"name": prompt.prompt})
        else:
            template = catalog.template(params.ref.uri)
            upstream, ref = template.upstream, params.ref.model_copy(update={"uri": template.uri})
        request = types.CompleteRequest(params=params.model_copy(update={"ref": ref, "meta": None}))
        return await self._request(upstream, key, call, request)

    async def set_logging_level(self, key: SessionKey, level: types.LoggingLevel) -> None:
        """Remember the key's level and pass it to every session the key holds (and later opens)."""
        self._log_levels[key] = level
        async with anyio.create_task_group() as tg:
            for service in self.services(key.agent):
                tg.start_soon(service.set_logging_level, key, level)

    async def roots_changed(self, key: SessionKey) -> None:
        """Tell every upstream session of `key` that its client's roots changed."""
        for service in self.services(key.agent):
            session = service.pool.sessions.get(key) if service.pool is not None else None
            if session is not None and session.is_ready and "roots" in session.declared:
                await session.notify(types.RootsListChangedNotification())

    async def _request(
        self, upstream: str, key: SessionKey, call: ClientCall | None, request: types.ClientRequest
    ) -> dict[str, Any]:
        return await self._run(
            self.service(key.agent, upstream), key, call, lambda session: session.request(request, call)
        )

    async def _run(
        self,
        service: UpstreamService,
        key: SessionKey,
        call: ClientCall | None,
        operation: Callable[[UpstreamSession], Awaitable[_T]],
    ) -> _T:
        record = self.records.touch(key) if key.is_explicit else None
        if record is None:
            return await service.run(key, call, operation)
        record.calls_in_flight += 1
        try:
            return await service.run(key, call, operation)
        finally:
            record.calls_in_flight -= 1
            self.records.touch(key)

    # Named sessions.

    def open_session(self, key: SessionKey) -> SessionRecord:
        """The named session's record, created now if it has none."""
        return self.records.touch(key)

    async def bind(self, key: SessionKey, service_name: str) -> SessionRecord:
        """Bind a service to the named session and start the session's upstream session with it now.

        Raises:
            UnknownServiceError: the key's scope sees no such service.
            UpstreamError: the upstream could not be started.
        """
        service = self.service(key.agent, service_name)
        record = self.records.touch(key)
        if service_name not in record.bound:
            record.bound.append(service_name)
        await service.open(key)
        return record

    def connection_status(self, key: SessionKey) -> dict[str, str]:
        """For each bound service: connected, starting, disconnected (opens on next use) or the service's state."""
        record = self.records.get(key)
        status: dict[str, str] = {}
        for name in record.bound if record is not None else []:
            service = self.service(key.agent, name)
            session = service.session_of(key)
            if session is not None and session.is_ready and not session.is_closing:
                status[name] = "connected"
            elif session is not None and not session.has_ended and not session.is_closing:
                status[name] = "starting"
            elif service.state is ServiceState.FAILED:
                status[name] = "failed"
            else:
                status[name] = "disconnected"
        return status

    async def restart_session(self, key: SessionKey) -> SessionRecord:
        """Close the named session's upstream sessions and open its bound services afresh: old state is gone."""
        await self._end_upstream_sessions(key)
        record = self.records.touch(key)
        for name in record.bound:
            await self.service(key.agent, name).open(key)
        return record

    async def refresh(self, key: SessionKey) -> None:
        """Drop what is known of the named session's listings and read them again from its upstreams."""
        record = self.records.touch(key)
        for name in record.bound or [s.name for s in self.services(key.agent)]:
            service = self.service(key.agent, name)
            session = service.pool.sessions.get(key) if service.pool is not None else None
            if session is not None and session.is_ready:
                for kind in LISTING_KINDS:
                    session.listings[kind] = await session.list_all(kind)
                self._key_listings_changed(key)
            else:
                await service.refresh_catalog()

    async def extend_session(self, key: SessionKey, seconds: float) -> SessionRecord:
        return self.records.extend(key, seconds)

    def named_sessions(self, agent: str) -> list[SessionRecord]:
        return [record for record in self.records if record.key.agent == agent]

    async def end_session(self, key: SessionKey) -> None:
        """Forget the key, then close every upstream session it holds (so it reads as closed from the start)."""
        self.records.remove(key)
        self._log_levels.pop(key, None)
        await self._end_upstream_sessions(key)

    async def _end_upstream_sessions(self, key: SessionKey) -> None:
        async with anyio.create_task_group() as tg:
            for service in self.services(key.agent):
                tg.start_soon(service.end_session, key)
        self._key_listings_changed(key)

    # Operator views.

    def statuses(self) -> list[ServiceInfo]:
        return [
            self.status_of(agent, service) for agent, services in self._scopes.items() for service in services.values()
        ]

    def status_of(self, agent: str, service: UpstreamService) -> ServiceInfo:
        """The status of `service`, which belongs to the scope `agent`."""
        return ServiceInfo(
            name=service.name,
            agent_id=agent or None,
            transport=service.config.resolved_transport,
            session_mode=service.config.session,
            state=service.state.value,
            tool_count=len(service.visible("tools")),
            client_sessions=len(service.pool) if service.pool is not None else 0,
            error=service.error.message if service.error and service.state is ServiceState.FAILED else None,
            from_config=not agent and service.name in self.settings.enabled_servers,
        )

    # Bookkeeping.

    def _new_service(self, name: str, config: UpstreamConfig) -> UpstreamService:
        return UpstreamService(
            name,
            config,
            prefix=config.prefix if config.prefix is not None else name,
            cap=config.max_sessions or self.settings.max_sessions_per_upstream,
            start_timeout_seconds=self.settings.upstream_start_timeout_seconds,
            spawn=self._spawn,
            hooks=self._hooks,
            on_catalog_changed=self._catalog_changed,
        )

    def _all_services(self) -> Iterable[UpstreamService]:
        return [service for services in self._scopes.values() for service in services.values()]

    def _spawn(self, session: UpstreamSession) -> None:
        assert self._task_group is not None
        self._task_group.start_soon(session.run, name=repr(session))

    def _build(self, agent: str, key: SessionKey | None, *, strict: bool) -> Catalog:
        sources: list[CatalogSource] = []
        for service in self.services(agent):
            session = service.pool.sessions.get(key) if key is not None and service.pool is not None else None
            own: Mapping[str, Listing] = session.listings if session is not None else {}
            listings = {kind: own.get(kind, service.visible(kind)) for kind in LISTING_KINDS}
            sources.append(
                CatalogSource(
                    upstream=service.name,
                    prefix=service.prefix,
                    config=service.config,
                    tools=[t for t in listings["tools"] if isinstance(t, types.Tool)],
                    prompts=[p for p in listings["prompts"] if isinstance(p, types.Prompt)],
                    resources=[r for r in listings["resources"] if isinstance(r, types.Resource)],
                    templates=[t for t in listings["templates"] if isinstance(t, types.ResourceTemplate)],
                    offers_resources=service.is_up
                    and service.capabilities is not None
                    and service.capabilities.resources is not None,
                )
            )
        previous = self.catalog if self._is_started else None
        return build_catalog(sources, session_argument=self.settings.session_argument, previous=previous, strict=strict)

    def _exposed_uri(self, key: SessionKey, upstream: str, uri: str) -> str:
        return self.catalog_for(key).exposed_uri(upstream, uri)

    def _key_listings_changed(self, key: SessionKey) -> None:
        self._key_catalogs.pop(key, None)
        has_listings = any(
            service.pool is not None and key in service.pool.sessions and service.pool.sessions[key].listings
            for service in self.services(key.agent)
        )
        if has_listings:
            self._keys_with_listings.add(key)
        else:
            self._keys_with_listings.discard(key)

    def _catalog_changed(self) -> None:
        if not self._is_started or self._task_group is None:
            return
        before = [self.catalog, *self._scope_catalogs.values()]
        self.catalog = self._build(STORE_SCOPE, None, strict=False)
        self._scope_catalogs.clear()
        self._key_catalogs.clear()
        after = [self._scope_catalog(agent) for agent in self._scopes]
        if len(before) != len(after) or any(not a.offers_same_as(b) for a, b in zip(before, after, strict=False)):
            for listener in self._listeners:
                self._task_group.start_soon(listener)

    async def _expire_sessions(self) -> None:
        idle = self.settings.session_idle_timeout_seconds
        interval = max(0.05, min(idle / 4, 30.0))
        while True:
            await anyio.sleep(interval)
            for key in self.records.expired():
                logger.info("closing %s: it expired", key)
                await self.end_session(key)
