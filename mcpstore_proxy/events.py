"""What happened to the proxy's sessions, for operators: one `OpsEvent` per reset, refusal, timeout, spawn and
pinning event, kept in a short ring (`EventLog.recent`, shown on the status page) and passed to subscribers
(the metrics). Recording is cheap and never raises into the code that records: a subscriber that fails is logged
and dropped.

Events carry bounded, non-secret values only: an upstream name, a key's kind, and a session's short hash
(`SessionKey` prints one), never a session id or name.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from mcpstore_proxy.clock import SYSTEM_CLOCK, Clock
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.principals import LOCAL

__all__ = ["EventKind", "EventLog", "OpsEvent"]

logger = logging.getLogger(__name__)

EventKind = Literal["spawn", "spawn_failed", "reset", "refusal", "timeout", "pinning", "reload"]
_RECENT: Final = 200


@dataclass(frozen=True, slots=True)
class OpsEvent:
    kind: EventKind
    at: float
    """Seconds since the epoch."""
    upstream: str | None = None
    session: str | None = None
    """The session's short hash (`SessionKey` text), never the id or name."""
    principal: str | None = None
    reason: str = ""
    seconds: float | None = None
    """How long it took, where that means something (a spawn)."""
    labels: dict[str, str] = field(default_factory=dict[str, str])
    """Bounded extra detail, such as which limit refused (`limit`)."""


Subscriber = Callable[[OpsEvent], None]


class EventLog:
    """The recent events, newest last, and the subscribers told of each."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, *, keep: int = _RECENT) -> None:
        self._clock = clock
        self._recent: deque[OpsEvent] = deque(maxlen=keep)
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def record(
        self,
        kind: EventKind,
        *,
        upstream: str | None = None,
        key: SessionKey | None = None,
        session: str | None = None,
        principal: str | None = None,
        reason: str = "",
        seconds: float | None = None,
        **labels: str,
    ) -> OpsEvent:
        """Record an event; `key` stands for `session` (its short hash and kind) and `principal`."""
        if key is not None:
            session = f"{key.kind} #{key.fingerprint}"
            principal = principal or (key.principal if key.principal != LOCAL.name else None)
        event = OpsEvent(kind, self._clock.now(), upstream, session, principal, reason, seconds, labels)
        self._recent.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                logger.exception("an event subscriber failed on %s; it is dropped", kind)
                self._subscribers.remove(subscriber)
        return event

    def recent(self, kinds: frozenset[EventKind] | None = None) -> list[OpsEvent]:
        """The events kept (the last 200), newest first, optionally of some kinds only."""
        return [event for event in reversed(self._recent) if kinds is None or event.kind in kinds]
