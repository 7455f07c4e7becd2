"""One configured upstream, kept running for its catalog and retried with backoff when it fails.

`UpstreamService.maintain` owns the upstream's *catalog session*. Started with
the proxy, it answers the listings (tools, prompts, resources, templates) for
the catalog, so that listing never spawns a client's session, and its
list-changed notices refresh the catalog for every client. A shared upstream
serves every client's requests on that same session (and fans resource updates
out to each client that subscribed); an isolated one serves each session key
from its own `SessionPool`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import anyio
from mcp import types

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import UpstreamClosedError, UpstreamError, UpstreamStartError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.pool import PoolHooks, SessionPool, Spawner, warn_reset
from mcpstore_proxy.relay import ClientCall, ClientChannel, ListKind, SessionRelay
from mcpstore_proxy.upstream import ALL_CLIENT_CAPABILITIES, EndReason, Listing, UpstreamSession

__all__ = ["LISTING_KINDS", "ServiceState", "UpstreamService"]

logger = logging.getLogger(__name__)

LISTING_KINDS: Final[tuple[ListKind, ...]] = ("tools", "prompts", "resources", "templates")
_FIRST_RETRY_SECONDS: Final = 1.0
_MAX_RETRY_SECONDS: Final = 60.0
_STABLE_AFTER_SECONDS: Final = 30.0
_T = TypeVar("_T")


class ServiceState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"


class UpstreamService:
    """A configured upstream: its state, what it offers, and the sessions clients hold with it."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        *,
        prefix: str,
        cap: int,
        start_timeout_seconds: float,
        spawn: Spawner,
        hooks: PoolHooks,
        on_catalog_changed: Callable[[], None],
    ) -> None:
        self.name = name
        self.config = config
        self.prefix = prefix
        self.state = ServiceState.STARTING
        self.error: UpstreamError | None = None
        self.listings: dict[ListKind, Listing] = {}
        self.capabilities: types.ServerCapabilities | None = None
        self.first_attempt_done = anyio.Event()
        self.pool = (
            None
            if config.session == "shared"
            else SessionPool(
                name, config, cap=cap, start_timeout_seconds=start_timeout_seconds, spawn=spawn, hooks=hooks
            )
        )
        self._hooks = hooks
        self._start_timeout_seconds = start_timeout_seconds
        self._on_catalog_changed = on_catalog_changed
        self._catalog: UpstreamSession | None = None
        self._wake = anyio.Event()
        self._state_changed = anyio.Event()
        self._is_closing = False
        self._restart_now = False
        self._generation = 0
        self._generation_seen: dict[SessionKey, int] = {}
        self._subscribers: dict[str, dict[SessionKey, ClientChannel]] = {}

    def __repr__(self) -> str:
        return f"<UpstreamService {self.name} {self.state.value}, {self.pool or 'shared'}>"

    @property
    def is_up(self) -> bool:
        return self.state in (ServiceState.READY, ServiceState.RESTARTING)

    def visible(self, kind: ListKind) -> Listing:
        """What the catalog lists of `kind`: nothing while the upstream is down."""
        return self.listings.get(kind, []) if self.is_up else []

    async def maintain(self) -> None:
        """Keep the catalog session up until `close()`: start, list, follow changes, restart on loss."""
        delay = _FIRST_RETRY_SECONDS
        while not self._is_closing:
            session = self._new_catalog_session()
            self._catalog = session
            self._announce_state()
            started = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.run)
                try:
                    await self._serve_catalog(session)
                finally:
                    session.close_soon()
            if self._is_closing:
                return
            if anyio.current_time() - started >= _STABLE_AFTER_SECONDS:
                delay = _FIRST_RETRY_SECONDS
            if self._restart_now:
                self._restart_now = False
                logger.info("restarting upstream '%s' as asked", self.name)
                self._set_state(ServiceState.STARTING)
                continue
            if session.end_reason is EndReason.LOST and self.state is ServiceState.READY:
                logger.warning("upstream '%s' went away (%s); restarting it", self.name, self._reason(session))
                self._set_state(ServiceState.RESTARTING)
            else:
                self.error = self.error or session.failure or UpstreamStartError(self.name, self._reason(session))
                logger.warning("%s; retrying in %g s", self.error.message, delay)
                self._set_state(ServiceState.FAILED)
            self.first_attempt_done.set()
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_SECONDS)

    def _new_catalog_session(self) -> UpstreamSession:
        relay = SessionRelay(self.name, exposed_uri=lambda uri: self._hooks.exposed_uri(_CATALOG_KEY, self.name, uri))
        relay.on_list_changed = self._list_changed
        relay.announces_list_changes = False  # the engine tells every client when the catalog changes
        if self.pool is None:
            relay.on_resource_updated = self._deliver_update
        return UpstreamSession(
            self.name,
            self.config,
            start_timeout_seconds=self._start_timeout_seconds,
            relay=relay,
            # A shared session may be asked anything on behalf of any client; the client asked is checked then.
            declared=ALL_CLIENT_CAPABILITIES if self.pool is None else frozenset(),
            label="catalog",
            on_end=lambda _: self._wake.set(),
        )

    async def _serve_catalog(self, session: UpstreamSession) -> None:
        try:
            await self._refresh(session, LISTING_KINDS)
        except UpstreamError as error:
            self.error = error
            return
        self.error = None
        self.capabilities = session.server_capabilities
        self._generation += 1
        self._set_state(ServiceState.READY)
        self.first_attempt_done.set()
        logger.info("upstream '%s' is ready with %d tools", self.name, len(self.listings.get("tools", [])))
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if session.has_ended or self._is_closing:
                return

    async def _list_changed(self, kind: ListKind) -> None:
        session = self._catalog
        if session is None or session.is_closing:
            return
        try:
            await self._refresh(session, ("resources", "templates") if kind == "resources" else (kind,))
        except UpstreamError as error:
            logger.warning("%s", error.message)

    async def _refresh(self, session: UpstreamSession, kinds: tuple[ListKind, ...]) -> None:
        """Re-read `kinds` from the catalog session (bounded by the start timeout)."""
        listings: dict[ListKind, Listing] = {}
        with anyio.move_on_after(self._start_timeout_seconds):
            await session.client()
            for kind in kinds:
                listings[kind] = await session.list_all(kind)
        if len(listings) < len(kinds):
            raise UpstreamStartError(
                self.name,
                f"upstream '{self.name}' did not list its {kinds[-1]} within {self._start_timeout_seconds:g} s",
            )
        if any(self.listings.get(kind) != listing for kind, listing in listings.items()):
            self.listings.update(listings)
            self._on_catalog_changed()

    def _set_state(self, state: ServiceState) -> None:
        was_up = self.is_up
        self.state = state
        self._announce_state()
        if self.is_up != was_up:
            self._on_catalog_changed()

    def _announce_state(self) -> None:
        self._state_changed.set()
        self._state_changed = anyio.Event()

    def _reason(self, session: UpstreamSession) -> str:
        return session.failure.message if session.failure else f"upstream '{self.name}' closed the connection"

    async def run(
        self, key: SessionKey, call: ClientCall | None, operation: Callable[[UpstreamSession], Awaitable[_T]]
    ) -> _T:
        """Run `operation` in the session that `key` holds with this upstream."""
        if self.pool is not None:
            return await self.pool.run(key, call, operation)
        for attempt in (1, 2):
            session = await self._shared_session()
            if not key.is_ephemeral:
                seen = self._generation_seen.get(key)
                self._generation_seen[key] = self._generation
                if seen is not None and seen != self._generation:
                    await warn_reset(call, self.name, key)
            try:
                return await operation(session)
            except UpstreamClosedError as error:
                if not (error.is_retryable and attempt == 1):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _shared_session(self) -> UpstreamSession:
        with anyio.move_on_after(self._start_timeout_seconds):
            while True:
                session = self._catalog
                if session is not None and not session.is_closing:
                    await session.client()
                    if session.is_ready:
                        return session
                elif self.state is ServiceState.FAILED and self.error is not None:
                    raise self.error
                await self._state_changed.wait()
        raise UpstreamStartError(
            self.name, f"upstream '{self.name}' is still restarting after {self._start_timeout_seconds:g} s"
        )

    async def open(self, key: SessionKey) -> UpstreamSession:
        """The session `key` holds with this upstream, started now if it has none; waits until it is ready.

        Raises:
            UpstreamError: the upstream could not be started.
        """
        if self.pool is None:
            return await self._shared_session()
        session = self.pool.open(key)
        await session.client()
        return session

    async def state_changed(self) -> None:
        """Wait for the next change of `state` (or of the catalog session)."""
        await self._state_changed.wait()

    async def refresh_catalog(self) -> None:
        """Read every listing again from the catalog session."""
        session = self._catalog
        if session is not None and session.is_ready:
            await self._refresh(session, LISTING_KINDS)

    def session_of(self, key: SessionKey) -> UpstreamSession | None:
        """The session `key` holds with this upstream, if it has one (a shared upstream's, for anyone)."""
        if self.pool is None:
            return self._catalog
        return self.pool.sessions.get(key)

    async def restart(self) -> None:
        """Close every session with this upstream and start it afresh, at once."""
        if self.pool is not None:
            await self.pool.aclose()
        self._restart_now = True
        if self._catalog is not None:
            await self._catalog.aclose()

    async def subscribe(self, key: SessionKey, call: ClientCall | None, uri: str, *, subscribe: bool) -> None:
        """Forward a (un)subscription; a shared session subscribes once per URI, whoever asks."""
        request: types.ClientRequest = (
            types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            if subscribe
            else types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
        )
        if self.pool is not None:
            await self.run(key, call, lambda session: session.request(request, call))
            return
        subscribers = self._subscribers.setdefault(uri, {})
        before = bool(subscribers)
        if subscribe and call is not None and call.connection is not None:
            subscribers[key] = call.connection
        elif not subscribe:
            subscribers.pop(key, None)
        after = bool(subscribers)
        # The shared session holds one subscription per URI: the first subscriber opens it, the last one closes it.
        if before != after or not after:
            await self.run(key, call, lambda session: session.request(request, call))

    async def _deliver_update(self, update: types.ResourceUpdatedNotification) -> None:
        uri = update.params.uri
        for key, channel in list(self._subscribers.get(uri, {}).items()):
            exposed = self._hooks.exposed_uri(key, self.name, uri)
            await channel.notify(
                types.ResourceUpdatedNotification(params=update.params.model_copy(update={"uri": exposed}))
            )

    async def set_logging_level(self, key: SessionKey, level: types.LoggingLevel) -> None:
        if self.pool is not None:
            await self.pool.set_logging_level(key, level)
        elif self._catalog is not None and self._catalog.is_ready:
            await self._catalog.set_logging_level(level)

    async def end_session(self, key: SessionKey) -> None:
        self._generation_seen.pop(key, None)
        for subscribers in self._subscribers.values():
            subscribers.pop(key, None)
        if self.pool is not None:
            await self.pool.end(key)

    async def close(self) -> None:
        """Close every client session, then stop the catalog session (and `maintain`)."""
        self._is_closing = True
        if self.pool is not None:
            await self.pool.aclose()
        self._wake.set()
        if self._catalog is not None:
            await self._catalog.aclose()


_CATALOG_KEY: Final = SessionKey("connection", "catalog")
"""Stands for "no particular client" when asking the engine how a URI is exposed."""
