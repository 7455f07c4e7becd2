"""The proxy's core, independent of how clients reach it.

`ProxyEngine` runs every configured upstream (`UpstreamService`), merges their
tools (`ToolCatalog`), routes each call to the session its key holds, and ends
sessions when their keys end. The MCP server, the stdio command and the SDK
are thin adapters over it.

Lifetime: `async with ProxyEngine(settings) as engine:` starts every upstream,
waits for each one's first start attempt, and builds the catalog strictly (a
tool-name collision is a start-up error). Leaving the block closes every
session and leaves no upstream process behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.abc
from mcp import types

from mcpstore_proxy.catalog import CatalogSource, ToolCatalog, ToolRoute
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.errors import ProxyError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.pool import ResetNotifier
from mcpstore_proxy.service import ServiceState, UpstreamService
from mcpstore_proxy.upstream import ProgressCallback, UpstreamSession

__all__ = ["ProxyEngine", "UpstreamStatus"]

logger = logging.getLogger(__name__)

_SHUTDOWN_SECONDS: Final = 15.0

ToolsChangedListener = Callable[[], Coroutine[Any, Any, None]]


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
    """Upstreams, their merged tools, and every client's persistent sessions with them."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.catalog = ToolCatalog(settings.session_argument)
        self._services: dict[str, UpstreamService] = {
            name: UpstreamService(
                name,
                config,
                prefix=settings.prefix_of(name),
                cap=settings.session_cap_of(name),
                start_timeout_seconds=settings.upstream_start_timeout_seconds,
                spawn=self._spawn,
                on_tools_changed=self._tools_changed,
            )
            for name, config in settings.enabled_servers.items()
        }
        self._listeners: list[ToolsChangedListener] = []
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
                self.catalog.rebuild(self._catalog_sources(), strict=True)
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

    def add_listener(self, listener: ToolsChangedListener) -> None:
        """Have `listener` awaited whenever the merged tool list changes after start-up."""
        self._listeners.append(listener)

    def route(self, name: str) -> ToolRoute:
        """Raises UnknownToolError when no exposed tool is called `name`."""
        return self.catalog.route(name)

    def list_tools(self) -> list[types.Tool]:
        return self.catalog.tools

    async def call_tool(
        self,
        route: ToolRoute,
        arguments: Mapping[str, Any] | None,
        key: SessionKey,
        *,
        progress_callback: ProgressCallback | None = None,
        on_reset: ResetNotifier | None = None,
    ) -> dict[str, Any]:
        """Call the routed tool in the session `key` holds with its upstream; the raw result, intact."""
        return await self._services[route.upstream].call_tool(
            key, route.tool, arguments, progress_callback=progress_callback, on_reset=on_reset
        )

    async def end_session(self, key: SessionKey) -> None:
        """Close every upstream session that `key` holds."""
        async with anyio.create_task_group() as tg:
            for service in self._services.values():
                tg.start_soon(service.end_session, key)

    def statuses(self) -> list[UpstreamStatus]:
        return [
            UpstreamStatus(
                name=service.name,
                transport=service.config.resolved_transport,
                session_mode=service.config.session,
                state=service.state.value,
                tool_count=len(service.visible_tools),
                client_sessions=len(service.pool) if service.pool is not None else 0,
                error=service.error.message if service.error and service.state is ServiceState.FAILED else None,
            )
            for service in self._services.values()
        ]

    def _spawn(self, session: UpstreamSession) -> None:
        assert self._task_group is not None
        self._task_group.start_soon(session.run, name=repr(session))

    def _catalog_sources(self) -> list[CatalogSource]:
        return [
            CatalogSource(
                upstream=service.name, prefix=service.prefix, config=service.config, tools=service.visible_tools
            )
            for service in self._services.values()
        ]

    def _tools_changed(self) -> None:
        if not self._is_started or self._task_group is None:
            return
        if self.catalog.rebuild(self._catalog_sources(), strict=False):
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
