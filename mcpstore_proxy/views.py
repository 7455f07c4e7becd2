"""Which catalog each session key sees, built on demand and kept until something it shows changes.

A key sees its scope's catalog (the store's, or, for an agent with services
of its own, the store's plus the agent's), until one of its own upstream
sessions announces a change of its tools, prompts or resources: from then on
that key sees a catalog of its own, in which that session's listings replace
the upstream's. Catalogs are cached: a key's until its sessions' listings
change, a scope's until any service's listings or state change. Every build
passes each service's tools through the tool pins (see `pins`), which may
withhold some.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mcp import types
from mcp.shared.inbound import x_mcp_header_map

from mcpstore_proxy.catalog import Catalog, CatalogSource, build_catalog, is_tool_selected
from mcpstore_proxy.keys import STORE_SCOPE, SessionKey
from mcpstore_proxy.pins import ToolPins
from mcpstore_proxy.registry import ServiceRegistry
from mcpstore_proxy.services import LISTING_KINDS, UpstreamService
from mcpstore_proxy.upstream_listings import Listing

__all__ = ["CatalogViews", "KeyFor"]

KeyFor = Callable[[UpstreamService, SessionKey], SessionKey]
"""The key whose session a key uses with a service (see `ProxyEngine.session_key`)."""


class CatalogViews:
    """The catalogs that scopes and keys see."""

    def __init__(
        self,
        registry: ServiceRegistry,
        keyed: KeyFor,
        *,
        session_argument: str,
        session_argument_alias: str,
        pins: ToolPins,
    ) -> None:
        self.store = Catalog()
        """What the store's scope sees (and every client without an agent)."""
        self._registry = registry
        self._keyed = keyed
        self._session_argument = session_argument
        self._session_argument_alias = session_argument_alias
        self._pins = pins
        self._scopes: dict[str, Catalog] = {}
        self._keys: dict[SessionKey, Catalog] = {}
        self._keys_with_listings: set[SessionKey] = set()
        self.maps_headers = False
        """Whether a catalog built so far has a tool whose input schema maps arguments to HTTP headers
        (`x-mcp-header`); never reset, so a False is a promise that no catalog does."""

    def __repr__(self) -> str:
        return f"<CatalogViews store {self.store!r}, {len(self._scopes)} agent and {len(self._keys)} key views>"

    def catalog_for(self, key: SessionKey) -> Catalog:
        """The catalog `key` sees: its scope's, unless its own sessions list something of their own."""
        listed = self._keys_with_listings
        if not listed or (key not in listed and key.for_principal() not in listed):
            return self.of_scope(key.agent)
        catalog = self._keys.get(key)
        if catalog is None:
            catalog = self._keys[key] = self.build(key.agent, key)
        return catalog

    def of_scope(self, agent: str) -> Catalog:
        if not self._registry.has_own(agent):
            return self.store
        catalog = self._scopes.get(agent)
        if catalog is None:
            catalog = self._scopes[agent] = self.build(agent, None)
        return catalog

    def capabilities(self, *, is_starting: bool) -> types.ServerCapabilities:
        """What the proxy can forward: the union of what its upstreams offer (tools always). While upstreams are
        still starting, everything they might offer, so that a client that connects early misses nothing later."""
        if is_starting:
            return types.ServerCapabilities(
                tools=types.ToolsCapability(list_changed=True),
                prompts=types.PromptsCapability(list_changed=True),
                resources=types.ResourcesCapability(subscribe=True, list_changed=True),
                logging=types.LoggingCapability(),
                completions=types.CompletionsCapability(),
            )
        offered = [s.capabilities for s in self._registry if s.capabilities is not None]
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

    def exposed_uri(self, key: SessionKey, upstream: str, uri: str) -> str:
        return self.catalog_for(key).exposed_uri(upstream, uri)

    def key_listings_changed(self, key: SessionKey) -> None:
        """One of `key`'s own sessions listed something anew (or ended): its view is rebuilt on next use."""
        self._keys.pop(key, None)
        if key.kind == "principal":  # every key of the principal may see this session's listings
            for cached in [k for k in self._keys if (k.principal, k.agent) == (key.principal, key.agent)]:
                del self._keys[cached]
        has_listings = any(
            (session := service.own_session(key)) is not None and bool(session.listings)
            for service in self._registry.services(key.agent)
        )
        if has_listings:
            self._keys_with_listings.add(key)
        else:
            self._keys_with_listings.discard(key)

    def rebuild(self) -> bool:
        """Rebuild after a service's listings or state changed; whether any client would now see a difference."""
        before = [self.store, *self._scopes.values()]
        self.store = self.build(STORE_SCOPE, None)
        self._scopes.clear()
        self._keys.clear()
        after = [self.of_scope(agent) for agent in self._registry.scopes]
        return len(before) != len(after) or any(not a.offers_same_as(b) for a, b in zip(before, after, strict=False))

    def build(self, agent: str, key: SessionKey | None, *, strict: bool = False) -> Catalog:
        """The catalog of every service `agent` sees, with `key`'s own listings where it has them.

        Raises:
            NameCollisionError: `strict` and two services expose the same tool or prompt name.
        """
        sources: list[CatalogSource] = []
        for service in self._registry.services(agent):
            session = service.own_session(self._keyed(service, key)) if key is not None else None
            own: Mapping[str, Listing] = session.listings if session is not None else {}
            listings = {kind: own.get(kind, service.visible(kind)) for kind in LISTING_KINDS}
            tools = [
                t for t in listings["tools"] if isinstance(t, types.Tool) and is_tool_selected(service.config, t.name)
            ]
            screened = self._pins.screen(service.name, service.prefix, service.config.tool_pinning, tools)
            sources.append(
                CatalogSource(
                    upstream=service.name,
                    prefix=service.prefix,
                    config=service.config,
                    tools=screened.exposed,
                    withheld=screened.withheld,
                    prompts=[p for p in listings["prompts"] if isinstance(p, types.Prompt)],
                    resources=[r for r in listings["resources"] if isinstance(r, types.Resource)],
                    templates=[t for t in listings["templates"] if isinstance(t, types.ResourceTemplate)],
                    offers_resources=service.is_up
                    and service.capabilities is not None
                    and service.capabilities.resources is not None,
                )
            )
        previous = None if strict else self.store
        catalog = build_catalog(
            sources,
            session_argument=self._session_argument,
            session_argument_alias=self._session_argument_alias,
            previous=previous,
            strict=strict,
        )
        if not self.maps_headers:
            self.maps_headers = any(x_mcp_header_map(tool.input_schema) for tool in catalog.tools)
        return catalog
