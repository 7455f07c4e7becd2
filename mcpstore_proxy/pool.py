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

The warm pool: with `warm_sessions: N`, the pool keeps up to N *spares*,
sessions started before any key asks, so that a new key's first call pays no
start. A new key adopts one (a ready one first), which binds to it what a
fresh session would have been started with (whose resource URIs, its label,
where its listings and end are reported; its log level follows on the call,
as for any session), and a replacement starts at once. A spare declares every
client capability, as a shared session does, since its client is not known
yet; the relay checks on each question whether the client asked declared it.
Spares count against the cap but only fill what keys leave free: a key takes a
spare rather than be refused, and no spare starts while keys hold the cap. A
spare that dies is replaced; one that fails to start is not retried until the
pool is next refilled (a key takes a spare or ends its session, or the
upstream comes up again), so a broken upstream does not spin. Nor does one that
dies soon after its handshake (a crash loop): a spare lost within 10 s of its
start (on the injected clock) holds every refill back for a backoff (1 s,
doubling to 60 s) before its replacement starts, in a task that `reset()` and
`aclose()` cancel; a spare that lived longer ends the backoff, and is replaced
at once. A key never waits for the backoff: it starts its own session as ever.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

import anyio
from mcp import types

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
from mcpstore_proxy.upstream import ALL_CLIENT_CAPABILITIES, ClientCapability, EndReason, UpstreamSession

__all__ = ["PoolHooks", "SessionPool", "Spawner", "TaskStarter", "declared_capabilities", "warn_reset"]

logger = logging.getLogger(__name__)

Spawner = Callable[[UpstreamSession], None]
TaskStarter = Callable[[Callable[[], Coroutine[Any, Any, None]], str], None]
"""Starts a background task (a function that takes no arguments, and the task's name) in the engine's task group."""
_T = TypeVar("_T")

_QUICK_LOSS_SECONDS: Final = 10.0
"""A spare lost sooner than this after its start is taken for a crash loop, and its replacement waits."""
_FIRST_REFILL_DELAY_SECONDS: Final = 1.0
_MAX_REFILL_DELAY_SECONDS: Final = 60.0


@dataclass(eq=False, slots=True)
class _Claim:
    """Whose a session is: its key, or None while it waits in the warm pool as a spare."""

    key: SessionKey | None = None
    started_at: float = 0.0
    """When its session was started, on the pool's clock."""


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
    declared = call.stream.capabilities if call is not None else None
    if declared is None:
        return frozenset()
    return frozenset(c for c in ALL_CLIENT_CAPABILITIES if getattr(declared, c, None) is not None)


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
        self._start_task = start_task
        self._clock = clock
        self._closed_because: str | None = None
        self._refusals = ThrottledWarning(logger)
        self._spare_failures = ThrottledWarning(logger)
        self._quick_losses = ThrottledWarning(logger)
        self._refill_delay_seconds = 0.0
        self._refill_wait: anyio.CancelScope | None = None
        self._sessions: dict[SessionKey, UpstreamSession] = {}
        self._spares: dict[UpstreamSession, _Claim] = {}
        self._lost_keys: set[SessionKey] = set()
        self._levelled: dict[UpstreamSession, types.LoggingLevel] = {}

    def __repr__(self) -> str:
        starting = sum(1 for session in self._sessions.values() if not session.is_ready)
        warm = f", {self.spares_ready}/{self.warm_target} spares ready" if self.warm_target else ""
        if self.is_refill_waiting:
            warm += f" (refilling after {self._refill_delay_seconds:g} s)"
        return (
            f"<SessionPool {self.upstream}: {len(self._sessions)} sessions ({starting} starting){warm}, "
            f"cap {self._cap}>"
        )

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def sessions(self) -> Mapping[SessionKey, UpstreamSession]:
        return self._sessions

    @property
    def warm_target(self) -> int:
        """How many spares the pool keeps (`warm_sessions`), room under the cap permitting."""
        return self._config.warm_sessions

    @property
    def spares(self) -> list[UpstreamSession]:
        """The spares, in the order they were started (some may still be starting)."""
        return list(self._spares)

    @property
    def spares_ready(self) -> int:
        return sum(1 for spare in self._spares if spare.is_ready and not spare.is_closing)

    @property
    def refill_delay_seconds(self) -> float:
        """The backoff: how long the last spare lost soon after its start held refills back (0 when none was)."""
        return self._refill_delay_seconds

    @property
    def is_refill_waiting(self) -> bool:
        """Whether the pool waits out its backoff before it starts any spare."""
        return self._refill_wait is not None

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
                    await self._apply_log_level(key, session)
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
        session = self._adopt_spare(key)
        if session is None:
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
            session = self._start(_Claim(key), declared_capabilities(call))
        self._sessions[key] = session
        self.fill()
        was_reset = key in self._lost_keys
        self._lost_keys.discard(key)
        return session, was_reset

    def _start(self, claim: _Claim, declared: frozenset[ClientCapability]) -> UpstreamSession:
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

    def _exposed_uri(self, claim: _Claim, uri: str) -> str:
        return uri if claim.key is None else self._hooks.exposed_uri(claim.key, self.upstream, uri)

    # The warm pool.

    def fill(self) -> None:
        """Start spares until there are `warm_sessions` of them, in what room the keys leave under the cap."""
        while (
            self._closed_because is None
            and self._refill_wait is None
            and len(self._spares) < self.warm_target
            and len(self._sessions) + len(self._spares) < self._cap
        ):
            claim = _Claim(started_at=self._clock.now())
            self._spares[self._start(claim, ALL_CLIENT_CAPABILITIES)] = claim

    def _adopt_spare(self, key: SessionKey) -> UpstreamSession | None:
        """Give `key` a spare (a ready one first), bound to it as if it had been started for it."""
        live = [spare for spare in self._spares if not spare.is_closing]
        if not live:
            return None
        spare = next((each for each in live if each.is_ready), live[0])
        claim = self._spares.pop(spare)
        claim.key = key
        spare.label = str(key)
        if spare.listings:  # it announced listings of its own while it waited
            self._hooks.listings_changed(key)
        return spare

    def _spare_ended(self, spare: UpstreamSession) -> None:
        claim = self._spares.pop(spare, None)
        if claim is None or spare.end_reason is EndReason.CLOSED:
            return
        reason = spare.failure.described if spare.failure else "the connection ended"
        if spare.end_reason is EndReason.LOST:
            lived_seconds = self._clock.now() - claim.started_at
            if lived_seconds >= _QUICK_LOSS_SECONDS:
                logger.warning(
                    "a spare session with upstream '%s' went away (%s); replacing it",
                    self.upstream,
                    reason,
                    extra=log_fields(upstream=self.upstream, error=reason),
                )
                self._end_backoff()
                self.fill()
            elif self._refill_wait is None and self._closed_because is None:
                # A wait under way already refills every spare missing at its end: a loss during it adds nothing.
                self._back_off(lived_seconds, reason)
        else:
            self._spare_failures.warn(
                "a spare session with upstream '%s' failed to start (%s); the warm pool refills when a key next "
                "takes or ends a session, or the upstream comes up again",
                self.upstream,
                reason,
                extra=log_fields(upstream=self.upstream, error=reason),
            )

    def _back_off(self, lived_seconds: float, reason: str) -> None:
        delay = min(self._refill_delay_seconds * 2, _MAX_REFILL_DELAY_SECONDS) or _FIRST_REFILL_DELAY_SECONDS
        self._refill_delay_seconds = delay
        self._quick_losses.warn(
            "a spare session with upstream '%s' went away %.1f s after it started (%s); its replacement waits %g s",
            self.upstream,
            lived_seconds,
            reason,
            delay,
            extra=log_fields(upstream=self.upstream, error=reason),
        )
        wait = anyio.CancelScope()
        self._refill_wait = wait
        self._start_task(partial(self._refill_after, wait, delay), f"refill of {self.upstream}'s warm pool")

    async def _refill_after(self, wait: anyio.CancelScope, delay_seconds: float) -> None:
        """Wait out the backoff, then refill. The waiting task's owner boundary: it never raises into the engine's
        task group, and `reset()` or `aclose()` cancels it (it then starts nothing)."""
        try:
            with wait:
                await self._clock.sleep(delay_seconds)
            if self._refill_wait is wait:  # not ended meanwhile (a cancel can land just as the sleep returns)
                self._refill_wait = None
                self.fill()
        except Exception:
            logger.exception("the warm pool of upstream '%s' could not refill", self.upstream)

    def _end_backoff(self) -> None:
        """Forget the backoff, and cancel its wait (if any)."""
        self._refill_delay_seconds = 0.0
        if self._refill_wait is not None:
            self._refill_wait.cancel()
            self._refill_wait = None

    async def spares_started(self) -> None:
        """Wait until every spare there is now has come up or failed (each start is bounded by its timeout)."""
        for spare in list(self._spares):
            try:
                await spare.client()
            except UpstreamError:
                continue

    async def _apply_log_level(self, key: SessionKey, session: UpstreamSession) -> None:
        level = self._hooks.log_level(key)
        if level is not None and self._levelled.get(session) != level:
            await session.client()
            self._levelled[session] = level
            await session.set_logging_level(level)

    async def set_logging_level(self, key: SessionKey, level: types.LoggingLevel) -> None:
        """Forward a client's `logging/setLevel` to the key's session, if it has one yet."""
        session = self._sessions.get(key)
        if session is not None and not session.is_closing:
            try:
                await self._apply_log_level(key, session)
            except UpstreamError as error:
                logger.info("could not set the log level of %s: %s", key, error.message)

    async def _refresh_listing(self, claim: _Claim, session: UpstreamSession, kind: ListKind) -> None:
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

    def _ended(self, claim: _Claim, session: UpstreamSession) -> None:
        if claim.key is None:
            self._spare_ended(session)
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
            self.fill()

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
            self.fill()

    async def end(self, key: SessionKey) -> None:
        """Close the key's session and wait (bounded) until its upstream is gone."""
        self._lost_keys.discard(key)
        session = self._sessions.pop(key, None)
        if session is not None:
            await session.aclose("its session ended")
            self.fill()

    async def reset(self, reason: str) -> None:
        """Close every session and spare (bounded, together); later requests open fresh ones, and `fill()` starts
        fresh spares."""
        sessions = [*self._sessions.values(), *self._spares]
        self._end_backoff()  # fresh sessions deserve a fresh chance; a crash loop backs off again from 1 s
        self._sessions.clear()
        self._spares.clear()
        self._lost_keys.clear()
        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(session.aclose, reason)

    async def aclose(self, reason: str) -> None:
        """Close every session and take no new ones; requests fail saying `reason`."""
        self._closed_because = reason
        await self.reset(reason)
