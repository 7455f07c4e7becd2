"""What the engine remembers about each named session: when it opened, when it was last used, when it
expires, and which services it has bound.

Named sessions are the explicit keys (a `session_id` argument, an `X-MCPStore-Session` header, or an SDK
session). Each use pushes the expiry out to at least `idle timeout` from now; `extend(seconds)` moves it by
exactly `seconds`. Times are wall-clock epoch seconds from a `Clock`, so what `session_info` reports is what
expiry uses, and tests can move time by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from mcpstore_proxy.clock import SYSTEM_CLOCK, Clock
from mcpstore_proxy.errors import ConfigError, SessionClosedError
from mcpstore_proxy.keys import SessionKey

__all__ = ["SessionRecord", "SessionRecords", "SessionStore"]


@dataclass(eq=False)
class SessionRecord:
    key: SessionKey
    created_at: float
    last_active: float
    expires_at: float
    bound: list[str] = field(default_factory=list[str])
    calls_in_flight: int = 0


class SessionStore(Protocol):
    """Where named-session records live. `SessionRecords` keeps them in this process; a store shared by several
    proxies (Redis, a database) would implement the same operations."""

    clock: Clock

    def __contains__(self, key: SessionKey) -> bool: ...
    def __iter__(self) -> Iterator[SessionRecord]: ...
    def keys(self) -> set[SessionKey]: ...
    def get(self, key: SessionKey) -> SessionRecord | None: ...
    def open(self, key: SessionKey) -> SessionRecord: ...
    def require(self, key: SessionKey) -> SessionRecord: ...
    def touch(self, key: SessionKey) -> SessionRecord: ...
    def extend(self, key: SessionKey, seconds: float) -> SessionRecord: ...
    def expires_in_seconds(self, record: SessionRecord) -> float: ...
    def remove(self, key: SessionKey) -> SessionRecord | None: ...
    def expired(self) -> list[SessionKey]: ...


class SessionRecords:
    """The named sessions, by key, in this process (a `SessionStore`)."""

    def __init__(self, idle_timeout_seconds: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._idle_timeout_seconds = idle_timeout_seconds
        self._records: dict[SessionKey, SessionRecord] = {}

    def __repr__(self) -> str:
        return f"<SessionRecords {len(self._records)} named sessions>"

    def __contains__(self, key: SessionKey) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[SessionRecord]:
        return iter(list(self._records.values()))

    def keys(self) -> set[SessionKey]:
        return set(self._records)

    def get(self, key: SessionKey) -> SessionRecord | None:
        return self._records.get(key)

    def open(self, key: SessionKey) -> SessionRecord:
        """The key's record, created (as just used) when it has none."""
        record = self._records.get(key)
        if record is None:
            now = self.clock.now()
            record = self._records[key] = SessionRecord(key, now, now, now + self._idle_timeout_seconds)
        return record

    def require(self, key: SessionKey) -> SessionRecord:
        """The key's record.

        Raises:
            SessionClosedError: the session is closed, expired, or was never opened.
        """
        record = self._records.get(key)
        if record is None:
            scope = f" of agent {key.agent!r}" if key.agent else ""
            raise SessionClosedError(
                f"session {key.name!r}{scope} is closed or was never opened; "
                "open it with create_session() or with_session()"
            )
        return record

    def touch(self, key: SessionKey) -> SessionRecord:
        """Note a use: the session stays at least `idle timeout` from now."""
        record = self.open(key)
        now = self.clock.now()
        record.last_active = now
        record.expires_at = max(record.expires_at, now + self._idle_timeout_seconds)
        return record

    def extend(self, key: SessionKey, seconds: float) -> SessionRecord:
        """Move the expiry by exactly `seconds`.

        Raises:
            ConfigError: `seconds` is not a finite number.
        """
        if not math.isfinite(seconds):
            raise ConfigError(f"extend needs a finite number of seconds, got {seconds!r}")
        record = self.open(key)
        record.expires_at += seconds
        return record

    def expires_in_seconds(self, record: SessionRecord) -> float:
        return record.expires_at - self.clock.now()

    def remove(self, key: SessionKey) -> SessionRecord | None:
        return self._records.pop(key, None)

    def expired(self) -> list[SessionKey]:
        """Keys whose expiry has passed and that have no call in flight."""
        now = self.clock.now()
        return [r.key for r in self._records.values() if r.expires_at <= now and r.calls_in_flight == 0]
