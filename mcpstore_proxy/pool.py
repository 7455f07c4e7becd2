"""The per-key sessions that clients hold with one isolated upstream.

Each key gets its own `UpstreamSession` (its own process, or its own HTTP
session), started on the key's first request and reused for every later one.
It declares upstream the client capabilities (sampling, elicitation, roots)
that the client who opened it declared, and it relays what the upstream
starts to that client. A session ends when its key ends (an explicit key ends
when it expires), or when the upstream goes away; in the last case the key's next
request gets a fresh session, and the client is warned that its state was reset.
A request that found its session closed before it was sent (a restart) runs on
a fresh one; once the pool itself is closed, requests fail with the reason.

With `warm_sessions`, the pool owns a `WarmPool` (mcpstore_proxy/warm_pool.py) of
spares, sessions started before any key asks: a new key adopts one before the
pool starts a session for it, and spares only fill the room that keys leave
under the cap.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import anyio
from mcp import types

from mcpstore_proxy.client_capabilities import ALL_CLIENT_CAPABILITIES, ClientCapability, declared_by
from mcpstore_proxy.clock import SYSTEM_CLOCK, Clock
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import (
    SessionLimitError,
    UpstreamClosedError,
    UpstreamError,
    UpstreamStoppedError,
)
from mcpstore_proxy.events import EventLog
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.logs import ThrottledWarning, log_fields
from mcpstore_proxy.relay import ClientCall, ListKind, SessionRelay
from mcpstore_proxy.transports import TransportFactory
from mcpstore_proxy.upstream import EndReason, UpstreamSession
from mcpstore_proxy.warm_pool import SessionClaim, TaskStarter, WarmPool

__all__ = ["PoolHooks", "SessionPool", "Spawner", "declared_capabilities", "warn_reset"]

logger = logging.getLogger(__name__)

Spawner = Callable[[UpstreamSession], None]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PoolHooks:
    """What a pool needs from the engine about a key."""

    exposed_uri: Callable[[SessionKey, str, str], str]
    """How the key's client knows an upstream's resource URI (key, upstream, uri)."""
    listings_changed: Callable[[SessionKey], None]
    """A session of the key now lists its own tools, prompts or resources."""
    log_level: Callable[[SessionKey], types.LoggingLevel | None]
    """The level the key's client asked for with `logging/setLevel`, if any."""


def declared_capabilities(call: ClientCall | None) -> frozenset[ClientCapability]:
    """The client capabilities to mirror upstream: what the calling client declared."""
    if call is not None and getattr(call.stream, "is_modern", False):
        # A 2026-07-28 client declares per request: declare all, and the relay checks each question's request.
        return frozenset(ALL_CLIENT_CAPABILITIES)
    return declared_by(call.stream.capabilities if call is not None else None)


async def warn_reset(call: ClientCall | None, upstream: str, key: SessionKey, events: EventLog) -> None:
    """Tell the client, on its request's stream, that its state with `upstream` is gone (and record the reset)."""
    events.record("reset", upstream=upstream, key=key, reason="its session was gone; a fresh one serves it")
    if call is None:
        return
    message = (
        f"upstream '{upstream}' was restarted: the state of {key} with it was reset "
        "(a fresh upstream session serves this call)"
    )
    await call.stream.notify(
        types.LoggingMessageNotification(
            params=types.LoggingMessageNotificationParams(level="warning", data=message, logger="mcpstore-proxy")
        )
    )


class SessionPool:
    """Lazily created, reused upstream sessions for one isolated upstream, one per session key."""

    def __init__(
        self,
        upstream: str,
        config: UpstreamConfig,
        *,
        cap: int,
        start_timeout_seconds: float,
        spawn: Spawner,
        hooks: PoolHooks,
        transports: TransportFactory,
        start_task: TaskStarter,
        hides_start_detail: bool = False,
        events: EventLog | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.upstream = upstream
        self._hides_start_detail = hides_start_detail
        self._events = events if events is not None else EventLog()
        self._config = config
        self._cap = cap
        self._start_timeout_seconds = start_timeout_seconds
        self._spawn = spawn
        self._hooks = hooks
        self._transports = transports
        self._closed_because: str | None = None
        self._refusals = ThrottledWarning(logger)
        self._sessions: dict[SessionKey, UpstreamSession] = {}
        self.warm = WarmPool(
            upstream,
            target=config.warm_sessions,
            start=self._start,
            room=lambda: self._cap - len(self._sessions),
            start_task=start_task,
            clock=clock,
        )
        """Its spares (`warm_sessions`); they only fill the room that keys leave under the cap."""
        self._lost_keys: set[SessionKey] = set()
        self._levelled: dict[UpstreamSession, types.LoggingLevel] = {}

    def __repr__(self) -> str:
        starting = sum(1 for session in self._sessions.values() if not session.is_ready)
        warm = f", {self.warm.summary}" if self.warm.target else ""
        return (
            f"<SessionPool {self.upstream}: {len(self._sessions)} sessions ({starting} starting){warm}, "
            f"cap {self._cap}>"
        )

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def sessions(self) -> Mapping[SessionKey, UpstreamSession]:
        return self._sessions

    async def run(
        self, key: SessionKey, call: ClientCall | None, operation: Callable[[UpstreamSession], Awaitable[_T]]
    ) -> _T:
        """Run `operation` on the key's session, opening it on first use (and once more if the request provably
        never reached the upstream: its HTTP session had expired, or the session was closed under it)."""
        try:
            for attempt in (1, 2):
                session, was_reset = self._session_for(key, call)
                if was_reset:
                    await warn_reset(call, self.upstream, key, self._events)
                try:
                    level = self._level_to_apply(key, session)
                    if level is not None:  # rare: nothing is awaited for it otherwise
                        await self._apply_log_level(session, level)
                    return await operation(session)
                except UpstreamClosedError as error:
                    if not (error.is_retryable and attempt == 1):
                        raise
                except UpstreamStoppedError as error:
                    if error.was_sent or attempt == 2 or self._closed_because is not None:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if key.is_ephemeral:
                self.end_soon(key)

    def warn_on_next_session(self, keys: set[SessionKey]) -> None:
        """Have each of `keys` warned, when it next opens a session here, that its state was reset (its
        session was with the upstream this pool replaces)."""
        self._lost_keys |= keys

    def open(self, key: SessionKey) -> UpstreamSession:
        """The key's session, started now if it has none (without a client to relay to yet)."""
        return self._session_for(key, None)[0]

    def _session_for(self, key: SessionKey, call: ClientCall | None) -> tuple[UpstreamSession, bool]:
        if self._closed_because is not None:
            raise UpstreamStoppedError(
                self.upstream,
                f"upstream '{self.upstream}' takes no new sessions: {self._closed_because}",
                was_sent=False,
            )
        session = self._sessions.get(key)
        if session is not None:
            if not session.is_closing:
                return session, False
            # Replaced before its owner task has finished; its state is gone all the same.
            del self._sessions[key]
            if session.end_reason is not EndReason.CLOSED:
                self._note_lost(key, session)
        session = self.warm.adopt(key)
        if session is not None:
            if session.listings:  # it announced listings of its own while it waited
                self._hooks.listings_changed(key)
        else:
            if len(self._sessions) >= self._cap:
                self._refusals.warn(
                    "refused a new session with upstream '%s' for %s: its cap of %d sessions is reached",
                    self.upstream,
                    key,
                    self._cap,
                    extra=log_fields(upstream=self.upstream, key=key),
                )
                self._events.record(
                    "refusal",
                    upstream=self.upstream,
                    key=key,
                    reason=f"its cap of {self._cap} sessions is reached",
                    limit="max_sessions_per_upstream",
                )
                raise SessionLimitError(
                    f"upstream '{self.upstream}' already has {len(self._sessions)} sessions, its cap; end idle "
                    f"sessions, or raise max_sessions_per_upstream (or mcpServers.{self.upstream}.max_sessions)"
                )
            session = self._start(SessionClaim(key), declared_capabilities(call))
        self._sessions[key] = session
        self.warm.fill()
        was_reset = key in self._lost_keys
        self._lost_keys.discard(key)
        return session, was_reset

    def _start(self, claim: SessionClaim, declared: frozenset[ClientCapability]) -> UpstreamSession:
        relay = SessionRelay(self.upstream, exposed_uri=partial(self._exposed_uri, claim))
        session = UpstreamSession(
            self.upstream,
            self._config,
            start_timeout_seconds=self._start_timeout_seconds,
            relay=relay,
            declared=declared,
            label=str(claim.key) if claim.key is not None else "a spare",
            on_end=partial(self._ended, claim),
            transports=self._transports,
            hides_start_detail=self._hides_start_detail,
            events=self._events,
        )
        relay.on_list_changed = partial(self._refresh_listing, claim, session)
        self._spawn(session)
        return session

    def _exposed_uri(self, claim: SessionClaim, uri: str) -> str:
        return uri if claim.key is None else self._hooks.exposed_uri(claim.key, self.upstream, uri)

    def _level_to_apply(self, key: SessionKey, session: UpstreamSession) -> types.LoggingLevel | None:
        """The key's log level, where its session has not been given it yet."""
        level = self._hooks.log_level(key)
        return level if level is not None and self._levelled.get(session) != level else None

    async def _apply_log_level(self, session: UpstreamSession, level: types.LoggingLevel) -> None:
        await session.client()
        self._levelled[session] = level
        await session.set_logging_level(level)

    async def set_logging_level(self, key: SessionKey, level: types.LoggingLevel) -> None:
        """Forward a client's `logging/setLevel` to the key's session, if it has one yet."""
        session = self._sessions.get(key)
        if session is not None and not session.is_closing:
            try:
                due = self._level_to_apply(key, session)
                if due is not None:
                    await self._apply_log_level(session, due)
            except UpstreamError as error:
                logger.info("could not set the log level of %s: %s", key, error.message)

    async def _refresh_listing(self, claim: SessionClaim, session: UpstreamSession, kind: ListKind) -> None:
        kinds: tuple[ListKind, ...] = ("resources", "templates") if kind == "resources" else (kind,)
        try:
            for each in kinds:
                session.listings[each] = await session.list_all(each)
        except UpstreamError as error:
            logger.warning(
                "could not refresh the %s of %s with '%s': %s", kind, session.label, self.upstream, error.message
            )
            return
        if claim.key is not None:
            self._hooks.listings_changed(claim.key)

    def _ended(self, claim: SessionClaim, session: UpstreamSession) -> None:
        if claim.key is None:
            self.warm.spare_ended(session)
        else:
            self._forget(claim.key, session)

    def _forget(self, key: SessionKey, session: UpstreamSession) -> None:
        self._levelled.pop(session, None)
        if self._sessions.get(key) is session:
            del self._sessions[key]
            if session.end_reason is EndReason.LOST and not key.is_ephemeral:
                self._note_lost(key, session)
            if session.listings:
                self._hooks.listings_changed(key)
            self.warm.fill()

    def _note_lost(self, key: SessionKey, session: UpstreamSession) -> None:
        """The key's session ended by itself (crash, exit): say so once, and warn its client on its next call."""
        reason = session.failure.described if session.failure else "the connection ended"
        logger.warning(
            "upstream '%s' went away during %s (%s); its next call starts afresh",
            self.upstream,
            key,
            reason,
            extra=log_fields(upstream=self.upstream, key=key, error=reason),
        )
        self._lost_keys.add(key)

    def end_soon(self, key: SessionKey) -> None:
        """Close the key's session without waiting for its upstream to exit."""
        self._lost_keys.discard(key)
        session = self._sessions.pop(key, None)
        if session is not None:
            session.close_soon("its session ended")
            self.warm.fill()

    async def end(self, key: SessionKey) -> None:
        """Close the key's session and wait (bounded) until its upstream is gone."""
        self._lost_keys.discard(key)
        session = self._sessions.pop(key, None)
        if session is not None:
            await session.aclose("its session ended")
            self.warm.fill()

    async def reset(self, reason: str) -> None:
        """Close every session and spare (bounded, together); later requests open fresh ones, and `warm.fill()`
        starts fresh spares."""
        sessions = [*self._sessions.values(), *self.warm.take_all()]
        self._sessions.clear()
        self._lost_keys.clear()
        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(session.aclose, reason)

    async def aclose(self, reason: str) -> None:
        """Close every session and take no new ones; requests fail saying `reason`."""
        self._closed_because = reason
        self.warm.close()
        await self.reset(reason)
