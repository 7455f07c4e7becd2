"""Named sessions: explicit keys that outlive connections, with their bound services, expiry and reaper.

A named session is an explicit key (a `session_id` argument, an
`X-MCPStore-Session` header, or an SDK session). Its record (`records`)
says when it expires; each use keeps it alive for the idle timeout, and
`extend` moves the expiry by exactly the given seconds. The reaper closes
expired sessions, and so their upstream sessions. A client may hold at most
`max_named_sessions_per_client` named sessions at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from mcpstore_proxy.errors import SessionLimitError
from mcpstore_proxy.events import EventLog
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.logs import ThrottledWarning, log_fields
from mcpstore_proxy.records import SessionRecord, SessionStore
from mcpstore_proxy.registry import ServiceRegistry
from mcpstore_proxy.services import LISTING_KINDS, ServiceState
from mcpstore_proxy.views import CatalogViews

__all__ = ["NamedSessions"]

logger = logging.getLogger(__name__)

_MIN_REAP_INTERVAL_SECONDS: Final = 0.05
_MAX_REAP_INTERVAL_SECONDS: Final = 30.0

EndKey = Callable[[SessionKey], Awaitable[None]]


class NamedSessions:
    """The named sessions and what can be done with them."""

    def __init__(
        self,
        records: SessionStore,
        registry: ServiceRegistry,
        views: CatalogViews,
        *,
        end_key: EndKey,
        max_per_client: int,
        events: EventLog | None = None,
    ) -> None:
        self.records = records
        self._events = events if events is not None else EventLog()
        self._registry = registry
        self._views = views
        self._end_key = end_key
        self._max_per_client = max_per_client
        self._by_client: dict[str, set[SessionKey]] = {}
        self._refusals = ThrottledWarning(logger)

    def __repr__(self) -> str:
        return f"<NamedSessions {len(list(self.records))} open, {len(self._by_client)} clients>"

    def admit(self, key: SessionKey, client: str) -> None:
        """Count `key` against `client`'s named sessions if it is new to it.

        Raises:
            SessionLimitError: the client already holds `max_named_sessions_per_client` others.
        """
        held = self._by_client.setdefault(client, set())
        if key in held:
            return
        held.intersection_update(self.records.keys())
        if len(held) >= self._max_per_client:
            self._refusals.warn(
                "refused %s: its client already holds %d named sessions (max_named_sessions_per_client)",
                key,
                len(held),
                extra=log_fields(key=key),
            )
            self._events.record(
                "refusal",
                key=key,
                reason=f"its client already holds {len(held)} named sessions",
                limit="max_named_sessions_per_client",
            )
            raise SessionLimitError(
                f"this client already holds {len(held)} named sessions, its limit; reuse or close one "
                "(close_session, or DELETE /admin/sessions/{id}), or raise max_named_sessions_per_client"
            )
        held.add(key)

    def forget_client(self, client: str) -> None:
        """The client is gone; its named sessions live on until they expire, uncounted."""
        self._by_client.pop(client, None)

    def open(self, key: SessionKey) -> SessionRecord:
        """The named session's record, created now if it has none."""
        return self.records.touch(key)

    def in_use(self, key: SessionKey) -> _InUse:
        """Mark a request in flight in the named session while the block runs: it cannot expire under the
        request."""
        return _InUse(self.records, key)

    def of_agent(self, agent: str) -> list[SessionRecord]:
        return [record for record in self.records if record.key.agent == agent]

    async def bind(self, key: SessionKey, service_name: str) -> SessionRecord:
        """Bind a service to the named session and start the session's upstream session with it now.

        Raises:
            UnknownServiceError: the key's scope sees no such service.
            UpstreamError: the upstream could not be started.
        """
        service = self._registry.service(key.agent, service_name)
        record = self.records.touch(key)
        if service_name not in record.bound:
            record.bound.append(service_name)
        await service.open(key)
        return record

    def unbind_everywhere(self, service_name: str) -> None:
        for record in self.records:
            if service_name in record.bound:
                record.bound.remove(service_name)

    def connection_status(self, key: SessionKey) -> dict[str, str]:
        """For each bound service: connected, starting, disconnected (opens on next use) or failed."""
        record = self.records.get(key)
        status: dict[str, str] = {}
        for name in record.bound if record is not None else []:
            service = self._registry.service(key.agent, name)
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

    async def restart(self, key: SessionKey) -> SessionRecord:
        """Close the named session's upstream sessions and open its bound services afresh: old state is gone."""
        await self._end_key(key)
        record = self.records.touch(key)
        for name in record.bound:
            await self._registry.service(key.agent, name).open(key)
        return record

    async def refresh(self, key: SessionKey) -> None:
        """Drop what is known of the named session's listings and read them again from its upstreams."""
        record = self.records.touch(key)
        for name in record.bound or [s.name for s in self._registry.services(key.agent)]:
            service = self._registry.service(key.agent, name)
            session = service.own_session(key)
            if session is not None and session.is_ready:
                for kind in LISTING_KINDS:
                    session.listings[kind] = await session.list_all(kind)
                self._views.key_listings_changed(key)
            else:
                await service.refresh_catalog()

    def extend(self, key: SessionKey, seconds: float) -> SessionRecord:
        return self.records.extend(key, seconds)

    async def close(self, key: SessionKey) -> None:
        """Forget the key, then close every upstream session it holds (so it reads as closed from the start)."""
        self.records.remove(key)
        await self._end_key(key)

    async def reap(self, idle_timeout_seconds: float) -> None:
        """The reaper (an owner task): close each named session once it expires. Never raises."""
        interval = max(_MIN_REAP_INTERVAL_SECONDS, min(idle_timeout_seconds / 4, _MAX_REAP_INTERVAL_SECONDS))
        while True:
            await self.records.clock.sleep(interval)
            for key in self.records.expired():
                logger.info("closing %s: it expired", key)
                try:
                    await self.close(key)
                except Exception:  # the boundary: one bad close must not stop expiry for everyone
                    logger.exception("could not close the expired %s", key)


class _InUse:
    """`NamedSessions.in_use`: a class, as a generator costs more on every call in a named session."""

    __slots__ = ("_key", "_record", "_records")

    def __init__(self, records: SessionStore, key: SessionKey) -> None:
        self._records = records
        self._key = key
        self._record: SessionRecord | None = None

    def __enter__(self) -> None:
        self._record = self._records.touch(self._key)
        self._record.calls_in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        if self._record is None:
            return
        self._record.calls_in_flight -= 1
        if self._key in self._records:  # closed during the call: it stays closed
            self._records.touch(self._key)
