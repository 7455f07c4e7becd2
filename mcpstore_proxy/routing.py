"""Forwarding a client's requests to the upstream sessions its key holds.

`RequestRouting` is `ProxyEngine`'s request side: it maps each exposed name or
URI back to its upstream's own, strips what the client sent for the proxy
itself, and runs the request in the session the key holds with that upstream
(a named session is held in use meanwhile). Where the session scope is the
principal, connection and ephemeral keys share the principal's own session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar, cast

import anyio
from mcp import MCPError, types

from mcpstore_proxy.catalog import Catalog, ToolRoute
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.named import NamedSessions
from mcpstore_proxy.operations import note_upstream
from mcpstore_proxy.registry import ServiceRegistry
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.services import UpstreamService
from mcpstore_proxy.upstream import UpstreamSession

__all__ = ["RequestRouting"]

_NOT_FORWARDED: Final[dict[str, Any]] = {"meta": None, "input_responses": None, "request_state": None}
"""What a client's request carries for the proxy itself (its `_meta`, and the rounds of a 2026-07-28 exchange)."""

_T = TypeVar("_T")


class RequestRouting:
    """The request side of `ProxyEngine`, which provides the services, the named sessions and each key's catalog."""

    settings: ProxySettings
    registry: ServiceRegistry
    named: NamedSessions
    _log_levels: dict[SessionKey, types.LoggingLevel]

    def catalog_for(self, key: SessionKey) -> Catalog:
        """What `key` sees (the engine's, with pinning screened)."""
        raise NotImplementedError

    async def call_tool(
        self, key: SessionKey, route: ToolRoute, arguments: Mapping[str, Any] | None, call: ClientCall | None = None
    ) -> dict[str, Any]:
        """Call the routed tool in the session `key` holds with its upstream; the raw result, intact."""
        service = self.registry.service(key.agent, route.upstream)
        try:
            return await self._run(service, key, call, lambda session: session.call_tool(route.tool, arguments, call))
        except MCPError as error:
            if error.code == types.INVALID_PARAMS:
                service.tools_may_have_changed()  # it may have changed the tool's schema without a notice
            raise

    async def get_prompt(
        self, key: SessionKey, params: types.GetPromptRequestParams, call: ClientCall | None = None
    ) -> dict[str, Any]:
        route = self.catalog_for(key).prompt(params.name)
        request = types.GetPromptRequest(params=params.model_copy(update={"name": route.prompt, **_NOT_FORWARDED}))
        return await self._request(route.upstream, key, call, request)

    async def read_resource(
        self, key: SessionKey, params: types.ReadResourceRequestParams, call: ClientCall | None = None
    ) -> dict[str, Any]:
        route = self.catalog_for(key).resource(params.uri)
        request = types.ReadResourceRequest(params=params.model_copy(update={"uri": route.uri, **_NOT_FORWARDED}))
        result = await self._request(route.upstream, key, call, request)
        if route.uri != params.uri:
            # Contents name the resource as the client asked for it.
            for content in cast(list[Any], result.get("contents", [])):
                if isinstance(content, dict) and cast(dict[str, Any], content).get("uri") == route.uri:
                    content["uri"] = params.uri
        return result

    async def subscribe(self, key: SessionKey, uri: str, call: ClientCall | None, *, subscribe: bool) -> None:
        route = self.catalog_for(key).resource(uri)
        service = self.registry.service(key.agent, route.upstream)
        note_upstream(service.name)
        await service.subscribe(self.session_key(service, key), call, route.uri, subscribe=subscribe)

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
            for service in self.registry.services(key.agent):
                keyed = self.session_key(service, key)
                self._log_levels[keyed] = level
                tg.start_soon(service.set_logging_level, keyed, level)

    async def roots_changed(self, key: SessionKey) -> None:
        """Tell every upstream session of `key` that its client's roots changed."""
        for service in self.registry.services(key.agent):
            session = service.own_session(self.session_key(service, key))
            if session is not None and session.is_ready and "roots" in session.declared:
                await session.notify(types.RootsListChangedNotification())

    async def _request(
        self, upstream: str, key: SessionKey, call: ClientCall | None, request: types.ClientRequest
    ) -> dict[str, Any]:
        return await self._run(
            self.registry.service(key.agent, upstream), key, call, lambda session: session.request(request, call)
        )

    def _run(
        self,
        service: UpstreamService,
        key: SessionKey,
        call: ClientCall | None,
        operation: Callable[[UpstreamSession], Awaitable[_T]],
    ) -> Awaitable[_T]:
        key = self.session_key(service, key)
        note_upstream(service.name)
        if not key.is_named:
            return service.run(key, call, operation)  # its coroutine: a frame less per call
        return self._run_named(service, key, call, operation)

    async def _run_named(
        self,
        service: UpstreamService,
        key: SessionKey,
        call: ClientCall | None,
        operation: Callable[[UpstreamSession], Awaitable[_T]],
    ) -> _T:
        with self.named.in_use(key):
            return await service.run(key, call, operation)

    def session_key(self, service: UpstreamService, key: SessionKey) -> SessionKey:
        """The key whose session `key`'s requests use with `service`: its own, or, where the session scope is
        the principal (`session_scope: principal`), the principal's own session in that agent scope."""
        scope = service.config.session_scope or self.settings.session_scope
        if scope == "principal" and key.kind in ("connection", "ephemeral"):
            return key.for_principal()
        return key
