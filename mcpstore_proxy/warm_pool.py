"""The warm pool of one isolated upstream: spares, sessions started before any key asks.

With `warm_sessions: N`, a `SessionPool` keeps up to N spares, so that a new key's first call pays no start. A
new key adopts one (`adopt`, a ready one first): its `SessionClaim` then names the key, which binds to it what a
fresh session would have been started with (whose resource URIs, its label, where its listings and end are
reported; its log level follows on the call, as for any session), and the pool refills at once. A spare declares
every client capability, as a shared session does, since its client is not known yet; the relay checks on each
question whether the client asked declared it.

Spares count against the cap but only fill what keys leave free (`room`): a key takes a spare rather than be
refused, and no spare starts while keys hold the cap. A spare that dies is replaced; one that fails to start is
not retried until the pool is next filled (a key takes a spare or ends its session, or the upstream comes up
again), so a broken upstream does not spin. Nor does one that dies soon after its handshake (a crash loop): a
spare lost within 10 s of its start (on the injected clock) holds every refill back for a backoff (1 s, doubling
to 60 s) before its replacement starts, in a task that `take_all()` and `close()` cancel; a spare that lived
longer ends the backoff, and is replaced at once. A key never waits for the backoff: the pool starts its own
session as ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import anyio

from mcpstore_proxy.backoff import Backoff
from mcpstore_proxy.client_capabilities import ALL_CLIENT_CAPABILITIES, ClientCapability
from mcpstore_proxy.clock import Clock
from mcpstore_proxy.errors import UpstreamError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.logs import ThrottledWarning, log_fields
from mcpstore_proxy.upstream import EndReason, UpstreamSession

__all__ = ["SessionClaim", "SessionStarter", "TaskStarter", "WarmPool"]

logger = logging.getLogger(__name__)

TaskStarter = Callable[[Callable[[], Coroutine[Any, Any, None]], str], None]
"""Starts a background task (a function that takes no arguments, and the task's name) in the engine's task group."""

_QUICK_LOSS_SECONDS: Final = 10.0
"""A spare lost sooner than this after its start is taken for a crash loop, and its replacement waits."""


@dataclass(eq=False, slots=True)
class SessionClaim:
    """Whose a session is: its key, or None while it waits in the warm pool as a spare."""

    key: SessionKey | None = None
    started_at: float = 0.0
    """When its session was started, on the pool's clock."""


SessionStarter = Callable[[SessionClaim, frozenset[ClientCapability]], UpstreamSession]
"""Starts a session of the pool for a claim, declaring those client capabilities upstream."""


class WarmPool:
    """The spares of one isolated upstream, and the backoff that holds their refill back in a crash loop."""

    def __init__(
        self,
        upstream: str,
        *,
        target: int,
        start: SessionStarter,
        room: Callable[[], int],
        start_task: TaskStarter,
        clock: Clock,
    ) -> None:
        self.upstream = upstream
        self.target = target
        """How many spares it keeps (`warm_sessions`), room under the cap permitting."""
        self._start = start
        self._room = room
        self._start_task = start_task
        self._clock = clock
        self._is_closed = False
        self._spares: dict[UpstreamSession, SessionClaim] = {}
        self._refill_backoff = Backoff()
        self._refill_wait: anyio.CancelScope | None = None
        self._spare_failures = ThrottledWarning(logger)
        self._quick_losses = ThrottledWarning(logger)

    def __repr__(self) -> str:
        return f"<WarmPool {self.upstream}: {self.summary}>"

    @property
    def summary(self) -> str:
        """Its state in a few words: "1/2 spares ready (refilling after 2 s)"."""
        waiting = f" (refilling after {self.refill_delay_seconds:g} s)" if self.is_refill_waiting else ""
        return f"{self.spares_ready}/{self.target} spares ready{waiting}"

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
        return self._refill_backoff.seconds

    @property
    def is_refill_waiting(self) -> bool:
        """Whether it waits out its backoff before it starts any spare."""
        return self._refill_wait is not None

    def fill(self) -> None:
        """Start spares until there are `target` of them, in what room the keys leave under the cap."""
        while (
            not self._is_closed
            and self._refill_wait is None
            and len(self._spares) < self.target
            and len(self._spares) < self._room()
        ):
            claim = SessionClaim(started_at=self._clock.now())
            self._spares[self._start(claim, ALL_CLIENT_CAPABILITIES)] = claim

    def adopt(self, key: SessionKey) -> UpstreamSession | None:
        """Give `key` a spare (a ready one first), bound to it as if it had been started for it; None if there is
        none. The caller refills."""
        live = [spare for spare in self._spares if not spare.is_closing]
        if not live:
            return None
        spare = next((each for each in live if each.is_ready), live[0])
        claim = self._spares.pop(spare)
        claim.key = key
        spare.label = str(key)
        return spare

    def spare_ended(self, spare: UpstreamSession) -> None:
        """A spare's session ended: replace it, at once or after the backoff, or (if it failed to start) not."""
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
            elif self._refill_wait is None and not self._is_closed:
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
        delay = self._refill_backoff.next()
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
        task group, and `take_all()` or `close()` cancels it (it then starts nothing)."""
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
        self._refill_backoff.reset()
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

    def take_all(self) -> list[UpstreamSession]:
        """Forget every spare, for the caller to close, and the backoff: fresh sessions deserve a fresh chance (a
        crash loop backs off again from 1 s). `fill()` starts fresh spares."""
        spares = list(self._spares)
        self._end_backoff()
        self._spares.clear()
        return spares

    def close(self) -> None:
        """Start no spare any more, nor wait to (its pool is closed); `take_all()` ends the ones there are."""
        self._is_closed = True
        self._end_backoff()
