"""Shutting down without dropping anyone: stop taking work, let the work in flight finish, then cut the rest.

Every forwarded request runs inside `Drain.request()`. Once `drain()` starts,
new requests (and new client sessions, refused at the HTTP door) get a clear
`ShuttingDownError`; the requests in flight get up to the grace period to
finish; whatever is still running then is cancelled, which cancels it
upstream, and its client gets a JSON-RPC error saying why. `hurry()` (a
second signal) ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Final, Generic, TypeVar

import anyio

from mcpstore_proxy.errors import ShuttingDownError
from mcpstore_proxy.events import EventLog
from mcpstore_proxy.logs import ThrottledWarning
from mcpstore_proxy.outstanding import Outstanding
from mcpstore_proxy.task_scope import TaskCancelScope

__all__ = ["Drain"]

logger = logging.getLogger(__name__)

_ANSWER_SECONDS: Final = 5.0
"""How long cancelled requests get to send their error answer."""

_Scope = anyio.CancelScope | TaskCancelScope
_ScopeT = TypeVar("_ScopeT", anyio.CancelScope, TaskCancelScope)


class Drain:
    """The requests in flight, and whether new ones are still welcome."""

    def __init__(self, events: EventLog | None = None) -> None:
        self._events = events if events is not None else EventLog()
        self._is_draining = False
        self._is_cutting = False
        self._in_flight: set[_Scope] = set()
        """The requests in flight, by the scope that cancels each."""
        self._requests = Outstanding()
        self._hurry = anyio.Event()
        self._refusals = ThrottledWarning(logger)

    def __repr__(self) -> str:
        return f"<Drain {'draining' if self._is_draining else 'open'}, {len(self._in_flight)} requests in flight>"

    @property
    def is_draining(self) -> bool:
        return self._is_draining

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def refuse_if_draining(self) -> None:
        """Raises ShuttingDownError once draining has begun."""
        if self._is_draining:
            self._refusals.warn("refused a request: the proxy is shutting down")
            self._events.record("refusal", reason="the proxy is shutting down", limit="shutting_down")
            raise ShuttingDownError("mcpstore-proxy is shutting down and takes no new requests; retry once it is back")

    def request(self) -> AbstractContextManager[anyio.CancelScope]:
        """Run one request as work in flight, in the cancel scope it gives: the drain cancels it once the grace
        period runs out, and the request's own caller may cancel it too (a client's cancellation), which then
        just ends the block.

        Raises:
            ShuttingDownError: draining has begun (before the request), or the grace period ran out (during it).
        """
        return _InFlight(self, self._in_flight, self._requests, anyio.CancelScope())

    def request_in(self, task: asyncio.Task[object]) -> AbstractContextManager[TaskCancelScope]:
        """`request()` for a request that has `task` to itself (the fast lane's): cancelled as asyncio
        cancels, at a fraction of the cost (see `task_scope`)."""
        return _InFlight(self, self._in_flight, self._requests, TaskCancelScope(task))

    @property
    def is_cutting(self) -> bool:
        """Whether the grace period ran out and the requests still in flight are being cancelled."""
        return self._is_cutting

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new requests, wait up to `grace_seconds` (or until `hurry()`) for those in flight, then cancel
        the rest and give them a moment to answer."""
        self._is_draining = True
        if self._in_flight:
            logger.info("waiting up to %g s for %d requests in flight", grace_seconds, len(self._in_flight))
        with anyio.move_on_after(grace_seconds):
            async with anyio.create_task_group() as tg:

                async def hurried() -> None:
                    await self._hurry.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(hurried)
                await self._requests.none_left()
                tg.cancel_scope.cancel()
        if self._in_flight:
            logger.warning("cancelling %d requests still in flight: the shutdown grace period ran out", self.in_flight)
            self._is_cutting = True
            for scope in list(self._in_flight):
                scope.cancel()
            with anyio.move_on_after(_ANSWER_SECONDS):
                await self._requests.none_left()

    def hurry(self) -> None:
        """End the grace period now."""
        self._hurry.set()


class _InFlight(Generic[_ScopeT]):
    """`Drain.request()`: a class, as a generator costs more on every forwarded request."""

    __slots__ = ("_drain", "_in_flight", "_requests", "_scope")

    def __init__(self, drain: Drain, in_flight: set[_Scope], requests: Outstanding, scope: _ScopeT) -> None:
        self._drain = drain
        self._in_flight = in_flight
        self._requests = requests
        self._scope = scope

    def __enter__(self) -> _ScopeT:
        if self._drain._is_draining:  # pyright: ignore[reportPrivateUsage]  # its own helper; a call the fewer
            self._drain.refuse_if_draining()
        scope = self._scope
        scope.__enter__()
        self._requests.__enter__()
        self._in_flight.add(scope)
        return scope

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        scope = self._scope
        self._in_flight.discard(scope)
        self._requests.__exit__()
        swallowed = scope.__exit__(kind, error, traceback)
        if scope.cancelled_caught and self._drain.is_cutting:
            raise ShuttingDownError(
                "mcpstore-proxy shut down before the upstream answered (its shutdown grace period ran out); "
                "the request was cancelled upstream"
            )
        return swallowed
