"""An upstream whose one session serves every client: its catalog session.

Every client's requests run on the catalog session. It declares every client
capability upstream (sampling, elicitation, roots); which client is asked is
decided when the upstream asks (see `relay`). It holds one subscription per
resource URI, whoever asked, and fans each update out to every subscriber.
When the upstream restarts, each key's next request carries a warning that
its state was reset.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from mcp import types

from mcpstore_proxy.client_capabilities import ALL_CLIENT_CAPABILITIES, ClientCapability
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import UpstreamClosedError, UpstreamStartError, UpstreamStoppedError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.pool import warn_reset
from mcpstore_proxy.relay import ClientCall, ClientChannel, SessionRelay
from mcpstore_proxy.services.base import ServiceContext, ServiceState, UpstreamService
from mcpstore_proxy.upstream import UpstreamSession

__all__ = ["SharedService"]

_T = TypeVar("_T")


class SharedService(UpstreamService):
    """An upstream whose single session every client shares."""

    def __init__(
        self, name: str, config: UpstreamConfig, *, prefix: str, context: ServiceContext, hides_start_detail: bool
    ) -> None:
        super().__init__(name, config, prefix=prefix, context=context, hides_start_detail=hides_start_detail)
        self._generation = 0
        self._generation_session: UpstreamSession | None = None
        self._generation_seen: dict[SessionKey, int] = {}
        self._subscribers: dict[str, dict[SessionKey, ClientChannel]] = {}

    @property
    def _catalog_declares(self) -> frozenset[ClientCapability]:
        # A shared session may be asked anything on behalf of any client; the client asked is checked then.
        return ALL_CLIENT_CAPABILITIES

    def _prepare_catalog_relay(self, relay: SessionRelay) -> None:
        relay.on_resource_updated = self._deliver_update

    def _generation_of(self, session: UpstreamSession) -> int:
        """Which upstream session this is, counted from 1: a new one is counted at its first call, since a call may
        reach it as soon as its handshake is done, before the service lists its tools and calls itself ready."""
        if session is not self._generation_session:
            self._generation_session = session
            self._generation += 1
        return self._generation

    @property
    def client_sessions(self) -> int:
        return 0

    def held_keys(self) -> set[SessionKey]:
        return set(self._generation_seen)

    def warn_on_next_call(self, keys: set[SessionKey]) -> None:
        for key in keys:
            self._generation_seen[key] = 0  # before this service's first session (generation 1)

    async def _run(
        self, key: SessionKey, call: ClientCall | None, operation: Callable[[UpstreamSession], Awaitable[_T]]
    ) -> _T:
        for attempt in (1, 2):
            session = await self._session()
            if not key.is_ephemeral:
                generation = self._generation_of(session)
                seen = self._generation_seen.get(key)
                self._generation_seen[key] = generation
                if seen is not None and seen != generation:
                    await warn_reset(call, self.name, key, self._context.events)
            try:
                return await operation(session)
            except UpstreamClosedError as error:
                if not (error.is_retryable and attempt == 1):
                    raise
            except UpstreamStoppedError as error:
                if error.was_sent or attempt == 2 or self.is_closing:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _session(self) -> UpstreamSession:
        """The ready catalog session, waiting (bounded) through a start or restart."""
        with anyio.move_on_after(self._start_timeout_seconds):
            while not self.is_closing:
                session = self._catalog
                if session is not None and not session.is_closing:
                    try:
                        await session.client()
                    except UpstreamStoppedError:
                        continue  # restarted under us: the next catalog session will do
                    if session.is_ready:
                        return session
                elif self.state is ServiceState.FAILED and self.error is not None:
                    raise self.error
                await self.state_changed()
            raise self._stopped_error()
        raise UpstreamStartError(
            self.name, f"upstream '{self.name}' is still restarting after {self._start_timeout_seconds:g} s"
        )

    async def open(self, key: SessionKey) -> UpstreamSession:
        return await self._session()

    def session_of(self, key: SessionKey) -> UpstreamSession | None:
        return self._catalog

    def own_session(self, key: SessionKey) -> UpstreamSession | None:
        return None

    async def subscribe(self, key: SessionKey, call: ClientCall | None, uri: str, *, subscribe: bool) -> None:
        """The shared session holds one subscription per URI: the first subscriber opens it, the last closes it."""
        request: types.ClientRequest = (
            types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            if subscribe
            else types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
        )
        subscribers = self._subscribers.setdefault(uri, {})
        before = bool(subscribers)
        if subscribe and call is not None and call.connection is not None:
            subscribers[key] = call.connection
        elif not subscribe:
            subscribers.pop(key, None)
        after = bool(subscribers)
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
        session = self._catalog
        if session is not None and session.is_ready:
            await session.set_logging_level(level)

    async def end_session(self, key: SessionKey) -> None:
        self._generation_seen.pop(key, None)
        for subscribers in self._subscribers.values():
            subscribers.pop(key, None)

    async def _reset_sessions(self, reason: str) -> None:
        return  # the one session is the catalog session, which the restart closes

    async def _close_sessions(self, reason: str) -> None:
        self._subscribers.clear()
