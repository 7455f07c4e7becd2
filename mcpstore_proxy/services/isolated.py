"""An upstream that gives every session key a session of its own (its own process, or HTTP session).

The catalog session only lists; each key's requests run in the key's own
session from a `SessionPool`, which relays what that session starts to the
client that owns it. With `warm_sessions`, the pool is filled with spares
whenever the catalog session comes up (at start, and after a restart).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mcp import types

from mcpstore_proxy.client_capabilities import ClientCapability
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.pool import SessionPool
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.services.base import ServiceContext, UpstreamService
from mcpstore_proxy.upstream import UpstreamSession

__all__ = ["IsolatedService"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class IsolatedService(UpstreamService):
    """An upstream with one session per session key, opened on the key's first request."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        *,
        prefix: str,
        context: ServiceContext,
        cap: int,
        hides_start_detail: bool,
    ) -> None:
        super().__init__(name, config, prefix=prefix, context=context, hides_start_detail=hides_start_detail)
        self.pool = SessionPool(
            name,
            config,
            cap=cap,
            start_timeout_seconds=context.start_timeout_seconds,
            spawn=context.spawn,
            hooks=context.hooks,
            transports=context.transports,
            start_task=context.start_task,
            hides_start_detail=hides_start_detail,
            events=context.events,
            clock=context.clock,
        )

    def __repr__(self) -> str:
        return f"<IsolatedService {self.name} {self.state.value}, {self.pool!r}>"

    @property
    def _catalog_declares(self) -> frozenset[ClientCapability]:
        return frozenset()  # the catalog session only lists; no client is behind it to ask

    def _became_ready(self) -> None:
        self.pool.warm.fill()

    @property
    def client_sessions(self) -> int:
        return len(self.pool)

    @property
    def warm_pool(self) -> tuple[int, int] | None:
        warm = self.pool.warm
        return (warm.spares_ready, warm.target) if warm.target else None

    def _run(
        self, key: SessionKey, call: ClientCall | None, operation: Callable[[UpstreamSession], Awaitable[_T]]
    ) -> Awaitable[_T]:
        return self.pool.run(key, call, operation)  # the pool's own coroutine: no frame of ours around it

    def held_keys(self) -> set[SessionKey]:
        return {key for key in self.pool.sessions if not key.is_ephemeral}

    def warn_on_next_call(self, keys: set[SessionKey]) -> None:
        self.pool.warn_on_next_session(keys)

    async def open(self, key: SessionKey) -> UpstreamSession:
        session = self.pool.open(key)
        await session.client()
        return session

    def session_of(self, key: SessionKey) -> UpstreamSession | None:
        return self.pool.sessions.get(key)

    def own_session(self, key: SessionKey) -> UpstreamSession | None:
        return self.pool.sessions.get(key)

    async def subscribe(self, key: SessionKey, call: ClientCall | None, uri: str, *, subscribe: bool) -> None:
        request: types.ClientRequest = (
            types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            if subscribe
            else types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
        )
        await self.run(key, call, lambda session: session.request(request, call))

    async def set_logging_level(self, key: SessionKey, level: types.LoggingLevel) -> None:
        await self.pool.set_logging_level(key, level)

    async def end_session(self, key: SessionKey) -> None:
        await self.pool.end(key)

    async def _reset_sessions(self, reason: str) -> None:
        await self.pool.reset(reason)

    async def _close_sessions(self, reason: str) -> None:
        await self.pool.aclose(reason)
