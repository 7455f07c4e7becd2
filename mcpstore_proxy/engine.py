"""The proxy's core, independent of how clients reach it.

`ProxyEngine` runs every upstream service (`services`), keeps the catalogs
each key sees (`views`), routes each request to the session its key holds
(`routing`), and ends sessions when their keys end; named sessions live in
`named`. The MCP server, the admin API and the SDK are thin adapters over it.

Lifetime: `async with ProxyEngine(settings) as engine:` starts every upstream
and returns at once: upstreams join the catalog as they come up, and a
client hears of each with a list-changed notice. `await engine.started()`
waits for every upstream's first start attempt (what `check` and the
embedded SDK want); `await engine.startup.settled()` waits for them only
within the first `startup_wait_seconds` (see `startup`), so that a client's
first listing includes the upstreams that start quickly without any request
waiting on a slow one.
Leaving the block closes every session and leaves no upstream process
behind. Every task the engine runs is an owner task that never raises into
it: one upstream's failure is that upstream's state.

Tool pinning (`pins`) screens every catalog built; an upstream that rejects a
call with INVALID_PARAMS has its tools listed again, so that a definition
changed without a notice is caught. An approval shows at once: made here
(`approve_tool`), or in the pins file by another process, which is looked for
while some change awaits approval.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.abc
from mcp import types

from mcpstore_proxy.catalog import Catalog, ToolRoute
from mcpstore_proxy.clock import SYSTEM_CLOCK, Clock
from mcpstore_proxy.config import ProxySettings, UpstreamConfig
from mcpstore_proxy.errors import UpstreamStartError
from mcpstore_proxy.events import EventLog
from mcpstore_proxy.keys import STORE_SCOPE, SessionKey
from mcpstore_proxy.named import NamedSessions
from mcpstore_proxy.owned_tasks import OwnedTasks
from mcpstore_proxy.pins import Approval, ToolPins
from mcpstore_proxy.pool import PoolHooks
from mcpstore_proxy.records import SessionRecords, SessionStore
from mcpstore_proxy.registry import Origin, ServicePolicy, ServiceRegistry
from mcpstore_proxy.reload import Reloader
from mcpstore_proxy.routing import RequestRouting
from mcpstore_proxy.services import ServiceContext, ServiceState, UpstreamService, create_service
from mcpstore_proxy.startup import StartupWindow
from mcpstore_proxy.status import ServiceInfo, service_info
from mcpstore_proxy.transports import TransportFactory, open_transport
from mcpstore_proxy.upstream import UpstreamSession
from mcpstore_proxy.views import CatalogViews

__all__ = ["ProxyEngine"]

logger = logging.getLogger(__name__)
_SHUTDOWN_SECONDS: Final = 15.0

CatalogListener = Callable[[], Coroutine[Any, Any, None]]


class ProxyEngine(RequestRouting):
    """Upstreams, what they offer, and every client's persistent sessions with them (requests are forwarded by
    `RequestRouting`)."""

    def __init__(
        self, settings: ProxySettings, *, transports: TransportFactory = open_transport, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.settings = settings
        self.clock = clock
        """The wall clock for expiry (session records, and the rounds of 2026-07-28 requests), for warm-pool
        backoffs, and for the grace period of a withdrawn upstream's calls in flight; tests move it."""
        self.events = EventLog(clock)
        """Resets, refusals, timeouts, spawns and pinning events: the status page's recent list, and the metrics."""
        self._log_levels: dict[SessionKey, types.LoggingLevel] = {}
        self._context = ServiceContext(
            start_timeout_seconds=settings.upstream_start_timeout_seconds,
            hooks=PoolHooks(
                exposed_uri=self._exposed_uri,
                listings_changed=self._key_listings_changed,
                log_level=self._log_levels.get,
            ),
            transports=transports,
            spawn=self._spawn,
            start_task=self._start_task,
            on_catalog_changed=self._catalog_changed,
            events=self.events,
            clock=clock,
        )
        self.registry = ServiceRegistry(settings, self._new_service)
        self.startup = StartupWindow(self.registry, settings.startup_wait_seconds)
        """How long a client's first requests wait for the configured upstreams' first start attempts."""
        self.pins = ToolPins(settings.tool_pins_path, mode=settings.tool_pinning, events=self.events)
        self.views = CatalogViews(
            self.registry,
            self.session_key,
            session_argument=settings.session_argument,
            session_argument_alias=settings.session_argument_alias,
            pins=self.pins,
        )
        self.named = NamedSessions(
            SessionRecords(settings.session_idle_timeout_seconds, clock),
            self.registry,
            self.views,
            end_key=self._end_upstream_sessions,
            max_per_client=settings.max_named_sessions_per_client,
            events=self.events,
        )
        self._listeners: list[CatalogListener] = []
        self.reloader = Reloader(self)
        """Applies a changed config file (SIGHUP, `POST /admin/reload`, `watch_config`)."""
        self._retiring: set[UpstreamService] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._sessions = OwnedTasks()
        """Each upstream session's owner task."""
        self._stack: AsyncExitStack | None = None
        self._is_closing = False

    def __repr__(self) -> str:
        return f"<ProxyEngine {self.registry!r}, {self.views!r}, {self.named!r}>"

    @property
    def catalog(self) -> Catalog:
        """What the store's scope sees."""
        return self.views.store

    @property
    def records(self) -> SessionStore:
        return self.named.records

    async def __aenter__(self) -> Self:
        self.startup.open()
        self._own_context = contextvars.copy_context()
        async with AsyncExitStack() as stack:
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            # Left after `_shutdown` has closed every session: what still runs then is asked to stop, and awaited.
            await stack.enter_async_context(self._sessions)
            stack.push_async_callback(self._shutdown)
            for service in self.registry.configured():
                self._start(service)
            self._task_group.start_soon(
                self.named.reap, self.settings.session_idle_timeout_seconds, name="session reaper"
            )
            for service in self.registry.restore(ServicePolicy.for_api(self.settings)):
                self._start(service)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                raise exc from None  # the block's own error, not wrapped by the task group it passed through
            raise

    async def started(self) -> None:
        """Wait until every service has made its first start attempt (each bounded by the start timeout).

        Raises:
            NameCollisionError: two configured upstreams expose the same tool or prompt name.
        """
        for service in self.registry:
            await service.first_attempt_done.wait()
        self.views.build(STORE_SCOPE, None, strict=True)

    async def _shutdown(self) -> None:
        """Close every session (bounded, in parallel), then cancel what is left."""
        logger.debug("closing every upstream session")
        self._is_closing = True
        with anyio.move_on_after(_SHUTDOWN_SECONDS, shield=True):
            async with anyio.create_task_group() as tg:
                for service in [*self.registry, *self._retiring]:
                    tg.start_soon(service.close, "the proxy is shutting down")
        logger.debug("every upstream session is closed")
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    def add_listener(self, listener: CatalogListener) -> None:
        """Have `listener` awaited whenever a catalog changes (it must not raise; a fault is logged)."""
        self._listeners.append(listener)

    # Services.

    def services(self, agent: str = STORE_SCOPE) -> list[UpstreamService]:
        return self.registry.services(agent)

    def service(self, agent: str, name: str) -> UpstreamService:
        return self.registry.service(agent, name)

    def scope_of(self, agent: str, name: str) -> str:
        return self.registry.scope_of(agent, name)

    async def add_service(
        self, agent: str, name: str, config: UpstreamConfig, *, origin: Origin = "sdk"
    ) -> UpstreamService:
        """Start a service at run time, seen by `agent` only (or by everyone, for the store); it is saved.

        Raises:
            ConfigError: the name is malformed, or already taken where this scope would see it.
        """
        service = self.registry.add(agent, name, config, origin=origin)
        self._start(service)
        return service

    async def remove_service(self, agent: str, name: str) -> None:
        """Stop a service added at run time, closing every session with it, whatever state it is in."""
        service = self.registry.remove(agent, name)
        self.named.unbind_everywhere(name)
        await service.close()
        self._catalog_changed()

    async def replace_service(
        self, agent: str, name: str, config: UpstreamConfig, *, origin: Origin = "sdk"
    ) -> UpstreamService:
        """Swap a service added at run time for one built from `config`, same name, same scope (it is saved).
        Its sessions close; sessions bound to it stay bound and start afresh with the new one.

        Raises:
            UnknownServiceError: the scope sees no such service.
            ConfigError: it comes from the config file.
        """
        scope = self.registry.scope_of(agent, name)
        old = self.registry.remove(agent, name)
        service = self.registry.add(scope, name, config, origin=origin)
        self._start(service)
        await old.close("it was replaced (update_service)")
        self._catalog_changed()
        return service

    async def restart_service(self, agent: str, name: str) -> None:
        await self.registry.service(agent, name).restart()

    # The config file's services, as a reload changes them (see `reload`).

    def add_configured_service(self, name: str, config: UpstreamConfig) -> None:
        """Start a service the config file now has.

        Raises:
            ConfigError: a service added at run time has the name.
        """
        self._start(self.registry.add_configured(name, config))

    def retire_configured_service(self, name: str, reason: str) -> None:
        """Withdraw a service the config file no longer has: at once from the catalog and from new sessions, while
        the calls in flight get `shutdown_grace_seconds` to finish before it closes."""
        service = self.registry.remove_configured(name)
        self.named.unbind_everywhere(name)
        self._retire(service, reason)
        self._catalog_changed()

    def replace_configured_service(self, name: str, config: UpstreamConfig, reason: str) -> None:
        """Start a service afresh from its changed entry; the old one retires (see `retire_configured_service`), and
        every key that held a session with it is warned on its next call that its state was reset."""
        old = self.registry.remove_configured(name)
        service = self.registry.add_configured(name, config)
        service.succeed(old)
        self._start(service)
        self._retire(old, reason)
        self._catalog_changed()

    def _retire(self, service: UpstreamService, reason: str) -> None:
        assert self._task_group is not None
        self._retiring.add(service)
        self._start_soon(self._retire_then_forget, service, reason, name=f"retiring {service.name}")

    async def _retire_then_forget(self, service: UpstreamService, reason: str) -> None:
        """An owner task: a fault is logged, never raised into the engine."""
        try:
            await service.retire(self.settings.shutdown_grace_seconds, reason)
        except Exception:
            logger.exception("upstream '%s': could not close it after it was withdrawn", service.name)
        finally:
            self._retiring.discard(service)

    async def wait_service(self, agent: str, name: str, timeout_seconds: float) -> UpstreamService:
        """Wait until the service is ready, through failed starts and the retries that follow them (an upstream
        started alongside the caller may not listen yet).

        Raises:
            UpstreamStartError: it stopped, or is still not ready after `timeout_seconds`: its last failure, else
                one naming its state.
        """
        service = self.registry.service(agent, name)
        with anyio.move_on_after(timeout_seconds):
            while service.state is not ServiceState.READY:
                if service.state is ServiceState.STOPPED:
                    raise UpstreamStartError(name, f"service '{name}' was stopped")
                await service.state_changed()
            return service
        failure = service.error
        if failure is not None:
            raise UpstreamStartError(name, failure.message, detail=failure.detail)
        raise UpstreamStartError(
            name, f"service '{name}' is not ready after {timeout_seconds:g} s (state: {service.state.value})"
        )

    def capabilities(self) -> types.ServerCapabilities:
        """What the proxy can forward (see `CatalogViews.capabilities`)."""
        return self.views.capabilities(is_starting=self.startup.is_starting)

    # What a key sees.

    def catalog_for(self, key: SessionKey) -> Catalog:
        self._pick_up_approvals()
        return self.views.catalog_for(key)

    def tool_route(self, key: SessionKey, name: str) -> ToolRoute:
        """Raises UnknownToolError when `key` sees no tool called `name` (ToolChangedError when pinning withholds
        it)."""
        self._pick_up_approvals()
        return self.views.catalog_for(key).tool(name)

    # Tool pinning.

    def approve_tool(self, name: str) -> Approval:
        """Approve the changed definition of the tool `name` (its exposed name, or `upstream/tool`); clients see
        it at once.

        Raises:
            UnknownToolError: no pinned tool is called `name`.
            AmbiguousToolError: several upstreams' tools are exposed as `name`.
        """
        approval = self.pins.approve(name)
        self._catalog_changed()  # also when the approval came from the file just now, with nothing left to do
        return approval

    def _pick_up_approvals(self) -> None:
        """While a change awaits approval, an approval written to the pins file by another process (the CLI)
        takes effect at once: checked by the file's stamp, only then."""
        if self.pins.awaits_approval and self.pins.reload_if_changed():
            self._catalog_changed()

    # Sessions.

    async def end_session(self, key: SessionKey) -> None:
        """End `key`: forget it (a named session reads as closed from the start), then close its upstream
        sessions."""
        self._log_levels.pop(key, None)
        await self.named.close(key)

    async def _end_upstream_sessions(self, key: SessionKey) -> None:
        async with anyio.create_task_group() as tg:
            for service in self.registry.services(key.agent):
                tg.start_soon(service.end_session, key)
        self.views.key_listings_changed(key)

    # Operator views.

    def statuses(self) -> list[ServiceInfo]:
        return [self.status_of(scope, service) for scope, service in self.registry.by_scope()]

    def status_of(self, scope: str, service: UpstreamService, *, for_operator: bool = True) -> ServiceInfo:
        """The status of `service`, which belongs to `scope` (with the failure's detail `for_operator`)."""
        from_config = self.registry.is_from_config(scope, service.name)
        return service_info(scope, service, from_config=from_config, for_operator=for_operator)

    # Bookkeeping.

    def _new_service(self, name: str, config: UpstreamConfig, origin: Origin) -> UpstreamService:
        return create_service(
            name,
            config,
            context=self._context,
            cap=self.settings.max_sessions_per_upstream,
            hides_start_detail=origin == "api" and config.url is not None,
        )

    def _start(self, service: UpstreamService) -> None:
        self._start_soon(service.maintain, name=f"upstream {service.name}")

    def _spawn(self, session: UpstreamSession) -> None:
        # A plain task, not the task group's: a session's runs as long as it does (see `owned_tasks`).
        self._sessions.start_soon(
            session.run(),
            name=repr(session),
            stop=partial(session.close_soon, "the proxy is shutting down"),
            context=self._own_context,
        )

    def _start_task(self, function: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._start_soon(function, name=name)

    def _start_soon(self, function: Callable[..., Coroutine[Any, Any, None]], *args: Any, name: str) -> None:
        """Start an owner task of the engine's in the engine's own context, not in that of the request that needed
        it (which set the request's scope and its operation there): the task would keep those for its whole life,
        an upstream session's for as long as its key lasts."""
        assert self._task_group is not None
        self._own_context.copy().run(self._task_group.start_soon, function, *args, name=name)

    def _exposed_uri(self, key: SessionKey, upstream: str, uri: str) -> str:
        return self.views.exposed_uri(key, upstream, uri)

    def _key_listings_changed(self, key: SessionKey) -> None:
        self.views.key_listings_changed(key)

    def _catalog_changed(self) -> None:
        if self._task_group is None or self._is_closing:
            return
        if self.views.rebuild():
            for listener in self._listeners:
                self._start_soon(_guarded, listener, name="catalog listener")


async def _guarded(listener: CatalogListener) -> None:
    """Run a catalog listener as an owner task: a fault is logged, never raised into the engine."""
    try:
        await listener()
    except Exception:
        logger.exception("a catalog-change listener failed")
