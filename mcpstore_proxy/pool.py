"""The per-key sessions that clients hold with one isolated upstream.

Each key gets its own `UpstreamSession` (its own process, or its own HTTP
session), started on the key's first call and reused for every later call
with that key. A session ends when its key ends, when an explicit key idles
out, or when the upstream goes away; in the last case the key's next call
gets a fresh session and is told that the state was reset.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import anyio

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import SessionLimitError, UpstreamClosedError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.upstream import EndReason, ProgressCallback, UpstreamSession

__all__ = ["ResetNotifier", "SessionPool"]

logger = logging.getLogger(__name__)

ResetNotifier = Callable[[str], Awaitable[None]]
"""Called with the upstream's name when a call lands on a fresh session because the old one was lost."""

Spawner = Callable[[UpstreamSession], None]


class SessionPool:
    """Lazily created, reused upstream sessions for one isolated upstream, one per session key."""

    def __init__(
        self, upstream: str, config: UpstreamConfig, *, cap: int, start_timeout_seconds: float, spawn: Spawner
    ) -> None:
        self.upstream = upstream
        self._config = config
        self._cap = cap
        self._start_timeout_seconds = start_timeout_seconds
        self._spawn = spawn
        self._sessions: dict[SessionKey, UpstreamSession] = {}
        self._lost_keys: set[SessionKey] = set()

    def __repr__(self) -> str:
        starting = sum(1 for session in self._sessions.values() if not session.is_ready)
        return f"<SessionPool {self.upstream}: {len(self._sessions)} sessions ({starting} starting), cap {self._cap}>"

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def sessions(self) -> Mapping[SessionKey, UpstreamSession]:
        return self._sessions

    async def call_tool(
        self,
        key: SessionKey,
        tool: str,
        arguments: Mapping[str, Any] | None,
        *,
        progress_callback: ProgressCallback | None = None,
        on_reset: ResetNotifier | None = None,
    ) -> dict[str, Any]:
        """Call `tool` on the key's session, creating the session on first use."""
        try:
            for attempt in (1, 2):
                session, was_reset = self._session_for(key)
                if was_reset and on_reset is not None:
                    await on_reset(self.upstream)
                try:
                    return await session.call_tool(tool, arguments, progress_callback)
                except UpstreamClosedError as error:
                    if not (error.is_retryable and attempt == 1):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if key.is_ephemeral:
                self.end_soon(key)

    def _session_for(self, key: SessionKey) -> tuple[UpstreamSession, bool]:
        session = self._sessions.get(key)
        if session is not None:
            if not session.is_closing:
                return session, False
            # Replaced before its owner task has finished; its state is gone all the same.
            del self._sessions[key]
            if session.end_reason is not EndReason.CLOSED:
                self._lost_keys.add(key)
        if len(self._sessions) >= self._cap:
            raise SessionLimitError(
                f"upstream '{self.upstream}' already has {len(self._sessions)} sessions, its cap; "
                f"end idle sessions, or raise max_sessions_per_upstream (or mcpServers.{self.upstream}.max_sessions)"
            )
        session = UpstreamSession(
            self.upstream,
            self._config,
            start_timeout_seconds=self._start_timeout_seconds,
            label=key.name[:16],
            on_end=partial(self._forget, key),
        )
        self._sessions[key] = session
        self._spawn(session)
        was_reset = key in self._lost_keys
        self._lost_keys.discard(key)
        return session, was_reset

    def _forget(self, key: SessionKey, session: UpstreamSession) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]
            if session.end_reason is EndReason.LOST and not key.is_ephemeral:
                logger.warning("upstream '%s' went away during %s; its next call starts afresh", self.upstream, key)
                self._lost_keys.add(key)

    def end_soon(self, key: SessionKey) -> None:
        """Close the key's session without waiting for its upstream to exit."""
        self._lost_keys.discard(key)
        session = self._sessions.pop(key, None)
        if session is not None:
            session.close_soon()

    async def end(self, key: SessionKey) -> None:
        """Close the key's session and wait (bounded) until its upstream is gone."""
        self._lost_keys.discard(key)
        session = self._sessions.pop(key, None)
        if session is not None:
            await session.aclose()

    def expire_idle(self, now: float, idle_timeout_seconds: float) -> None:
        """Close explicit-key sessions that had no call in flight for `idle_timeout_seconds`."""
        for key, session in list(self._sessions.items()):
            if key.is_explicit and session.is_idle and now - session.last_used >= idle_timeout_seconds:
                logger.info(
                    "closing %s with upstream '%s': idle for %.0f s", key, self.upstream, now - session.last_used
                )
                self.end_soon(key)

    async def aclose(self) -> None:
        """Close every session and wait (bounded, together) until their upstreams are gone."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        self._lost_keys.clear()
        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(session.aclose)
