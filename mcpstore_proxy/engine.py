"""The proxy's core, independent of how clients reach it.

`ProxyEngine` runs every configured upstream (`UpstreamService`), merges what
they offer into a `Catalog`, routes each request to the session its key holds,
and ends sessions when their keys end. The MCP server, the stdio command and the
SDK are thin adapters over it.

Catalogs. Every client sees the global catalog, built from the upstreams'
catalog sessions, until one of its own upstream sessions announces a change of
its tools, prompts or resources: from then on that key sees a catalog of its
own, in which that session's listings replace the upstream's.

Lifetime: `async with ProxyEngine(settings) as engine:` starts every upstream,
waits for each one's first start attempt, and builds the catalog strictly (a
name collision is a start-up error). Leaving the block closes every session
and leaves no upstream process behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, cast

import anyio
import anyio.abc
from mcp import types

from mcpstore_proxy.catalog import Catalog, CatalogSource, ToolRoute, build_catalog
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.errors import ProxyError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.pool import PoolHooks
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.service import LISTING_KINDS, ServiceState, UpstreamService
from mcpstore_proxy.upstream import Listing, UpstreamSession

__all__ = ["ProxyEngine", "UpstreamStatus"]

logger = logging.getLogger(__name__)

_SHUTDOWN_SECONDS: Final = 15.0

CatalogListener = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """One upstream as `check` and operators see it."""

    name: str
    transport: str
    session_mode: str
    state: str
    tool_count: int
    client_sessions: int
    error: str | None


class ProxyEngine:
    """Upstreams, what they offer, and every client's persistent sessions with them."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.catalog = Catalog()
        self._key_catalogs: dict[SessionKey, Catalog] = {}
        self._keys_with_listings: set[SessionKey] = set()
        self._log_levels: dict[SessionKey, types.LoggingLevel] = {}
        hooks = PoolHooks(
            exposed_uri=self._exposed_uri, listings_changed=self._key_listings_changed, log_level=self._log_levels.get
        )
        self._services: dict[str, UpstreamService] = {
            name: UpstreamService(
                name,
                config,
                prefix=settings.prefix_of(name),
                cap=settings.session_cap_of(name),
                start_timeout_seconds=settings.upstream_start_timeout_seconds,
                spawn=self._spawn,
                hooks=hooks,
                on_catalog_changed=self._catalog_changed,
            )
            for name, config in settings.enabled_servers.items()
        }
        self._listeners: list[CatalogListener] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._is_started = False

    def __repr__(self) -> str:
        return f"<ProxyEngine {len(self._services)} upstreams, {self.catalog!r}>"

    async def __aenter__(self) -> Self:
        failure: ProxyError | None = None
        async with AsyncExitStack() as stack:
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._shutdown)
            for service in self._services.values():
                self._task_group.start_soon(service.maintain, name=f"upstream {service.name}")
            self._task_group.start_soon(self._expire_idle_sessions, name="idle session reaper")
            try:
                for service in self._services.values():
                    await service.first_attempt_done.wait()
                self.catalog = self._build(None, strict=True)
            except ProxyError as error:
                # Raised after the task group has wound down, so it is not wrapped in an exception group.
                failure = error
            else:
                self._is_started = True
                self._stack = stack.pop_all()
                return self
        assert failure is not None
        raise failure

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
                for service in self._services.values():
                    tg.start_soon(service.close)
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    @property
    def services(self) -> Mapping[str, UpstreamService]:
        return self._services

    def add_listener(self, listener: CatalogListener) -> None:
        """Have `listener` awaited whenever the global catalog changes after start-up."""
        self._listeners.append(listener)

    # What a key sees.

    def catalog_for(self, key: SessionKey | None) -> Catalog:
        """The catalog `key` sees: the global one, unless its own sessions list something of their own."""
        if key is None or key not in self._keys_with_listings:
            return self.catalog
        catalog = self._key_catalogs.get(key)
        if catalog is None:
            catalog = self._key_catalogs[key] = self._build(key, strict=False)
        return catalog

    def tool_route(self, key: SessionKey | None, name: str) -> ToolRoute:
        """Raises UnknownToolError when `key` sees no tool called `name`."""
        return self.catalog_for(key).tool(name)

    def capabilities(self) -> types.ServerCapabilities:
        """What the proxy can forward: the union of what its upstreams offer (tools always)."""
        offered = [s.capabilities for s in self._services.values() if s.capabilities is not None]
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

    # Requests.

    async def call_tool(
        self, key: SessionKey, route: ToolRoute, arguments: Mapping[str, Any] | None, call: ClientCall | None = None
    ) -> dict[str, Any]:
        """Call the routed tool in the session `key` holds with its upstream; the raw result, intact."""
        return await self._services[route.upstream].run(
            key, call, lambda session: session.call_tool(route.tool, arguments, call)
        )

    async def get_prompt(
        self, key: SessionKey, params: types.GetPromptRequestParams, call: ClientCall | None = None
    ) -> dict[str, Any]:
        route = self.catalog_for(key).prompt(params.name)
        request = types.GetPromptRequest(params=params.model_copy(update={"name": route.prompt, "meta": None}))
        return await self._run(route.upstream, key, call, request)

    async def read_resource(
        self, key: SessionKey, params: types.ReadResourceRequestParams, call: ClientCall | None = None
    ) -> dict[str, Any]:
        route = self.catalog_for(key).resource(params.uri)
        request = types.ReadResourceRequest(params=params.model_copy(update={"uri": route.uri, "meta": None}))
        result = await self._run(route.upstream, key, call, request)
        if route.uri != params.uri:
            # Contents name the resource as the client asked for it.
            for content in cast(list[Any], result.get("contents", [])):
                if isinstance(content, dict) and cast(dict[str, Any], content).get("uri") == route.uri:
                    content["uri"] = params.uri
        return result

    async def subscribe(self, key: SessionKey, uri: str, call: ClientCall | None, *, subscribe: bool) -> None:
        route = self.catalog_for(key).resource(uri)
        await self._services[route.upstream].subscribe(key, call, route.uri, subscribe=subscribe)

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
        return await self._run(upstream, key, call, request)

    async def set_logging_level(self, key: SessionKey, level: types.LoggingLevel) -> None:
        """Remember the key's level and pass it to every session the key holds (and later opens)."""
        self._log_levels[key] = level
        async with anyio.create_task_group() as tg:
            for service in self._services.values():
                tg.start_soon(service.set_logging_level, key, level)

    async def roots_changed(self, key: SessionKey) -> None:
        """Tell every upstream session of `key` that its client's roots changed."""
        for service in self._services.values():
            session = service.pool.sessions.get(key) if service.pool is not None else None
            if session is not None and session.is_ready and "roots" in session.declared:
                await session.notify(types.RootsListChangedNotification())

    async def end_session(self, key: SessionKey) -> None:
        """Close every upstream session that `key` holds."""
        self._log_levels.pop(key, None)
        async with anyio.create_task_group() as tg:
            for service in self._services.values():
                tg.start_soon(service.end_session, key)
        self._key_listings_changed(key)

    async def _run(
        self, upstream: str, key: SessionKey, call: ClientCall | None, request: types.ClientRequest
    ) -> dict[str, Any]:
        return await self._services[upstream].run(key, call, lambda session: session.request(request, call))

    # Operator views.

    def statuses(self) -> list[UpstreamStatus]:
        return [
            UpstreamStatus(
                name=service.name,
                transport=service.config.resolved_transport,
                session_mode=service.config.session,
                state=service.state.value,
                tool_count=len(service.visible("tools")),
                client_sessions=len(service.pool) if service.pool is not None else 0,
                error=service.error.message if service.error and service.state is ServiceState.FAILED else None,
            )
            for service in self._services.values()
        ]

    # Bookkeeping.

    def _spawn(self, session: UpstreamSession) -> None:
        assert self._task_group is not None
        self._task_group.start_soon(session.run, name=repr(session))

    def _build(self, key: SessionKey | None, *, strict: bool) -> Catalog:
        sources: list[CatalogSource] = []
        for service in self._services.values():
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
        previous = None if key is None and not self._is_started else self.catalog
        return build_catalog(sources, session_argument=self.settings.session_argument, previous=previous, strict=strict)

    def _exposed_uri(self, key: SessionKey, upstream: str, uri: str) -> str:
        return self.catalog_for(key).exposed_uri(upstream, uri)

    def _key_listings_changed(self, key: SessionKey) -> None:
        self._key_catalogs.pop(key, None)
        has_listings = any(
            service.pool is not None and key in service.pool.sessions and service.pool.sessions[key].listings
            for service in self._services.values()
        )
        if has_listings:
            self._keys_with_listings.add(key)
        else:
            self._keys_with_listings.discard(key)

    def _catalog_changed(self) -> None:
        if not self._is_started or self._task_group is None:
            return
        catalog = self._build(None, strict=False)
        self._key_catalogs.clear()
        changed = not catalog.offers_same_as(self.catalog)
        self.catalog = catalog
        if changed:
            for listener in self._listeners:
                self._task_group.start_soon(listener)

    async def _expire_idle_sessions(self) -> None:
        idle = self.settings.session_idle_timeout_seconds
        interval = max(0.05, min(idle / 4, 30.0))
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            for service in self._services.values():
                if service.pool is not None:
                    service.pool.expire_idle(now, idle)
