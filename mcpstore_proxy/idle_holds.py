"""The idle countdown of the Streamable HTTP sessions whose requests the lane serves, kept without a timer per request.

The SDK's transport ends a session once no request has been in flight for its idle timeout: each request it serves
moves the session's idle scope's deadline to infinity and, when the last one ends, back to the timeout from then.
Done for each request the lane serves, that made, cancelled and closed a timer per call. Here the lane's requests
count in flight as the SDK's do, but the deadline is moved to infinity once, when the lane first holds the session
after the SDK set it, and the time the lane's last request ended is noted. One timer per lane, armed for the
earliest countdown to end, cancels the idle scope of a session that has been idle for the timeout since then, as the
deadline would have; a session whose deadline the SDK set again (its own request ended last) is left to the SDK's
countdown.

Not `deadlines.Deadlines`' waiters (whose timer, `EarliestTimer`, it shares): that asks every waiter at each firing,
about every 50 ms while calls are in flight, and holds its waiters; this keeps a heap, so a firing looks only at the
sessions whose countdown is due, and weak references, so a session that ended is not kept alive until its turn.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import weakref
from typing import Any, Final

from mcp.server.streamable_http import StreamableHTTPServerTransport

from mcpstore_proxy.deadlines import EarliestTimer

__all__ = ["IdleHold", "IdleHolds"]

logger = logging.getLogger(__name__)

_STATE_KEY: Final = "mcpstore_proxy.idle_hold"


class IdleHold:
    """One session's hold, shared by the lane's requests in it: while the block runs the session does not expire;
    it gives False when the session's idle period already ran out (the SDK answers for a session that is ending)."""

    __slots__ = ("__weakref__", "_holds", "_idle_since", "_is_queued", "_loop", "_timeout", "_transport")

    def __init__(
        self, transport: StreamableHTTPServerTransport, holds: IdleHolds, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._transport = transport
        self._loop = loop
        timeout: float | None = getattr(transport, "_idle_timeout")  # noqa: B009  # private; pinned by a test
        self._timeout = math.inf if transport.idle_scope is None or timeout is None else timeout
        """The session's idle timeout; infinite for a session that never expires."""
        self._holds = holds
        self._idle_since = 0.0
        """When the lane's last request in the session ended (the loop's clock)."""
        self._is_queued = False
        """Whether `holds` will look at this session's countdown (an entry in its queue)."""

    def __enter__(self) -> bool:
        if self._timeout == math.inf:
            return True
        transport = self._transport
        transport._requests_in_flight += 1  # pyright: ignore[reportPrivateUsage]  # private; pinned by a test
        idle = transport.idle_scope
        assert idle is not None  # a session with a timeout has one from its start
        if idle.cancel_called:
            return False  # counted all the same: the block's end counts it out
        if idle.deadline != math.inf:  # set by the SDK (the session's start, or its own request ending last)
            idle.deadline = math.inf
        return True

    def __exit__(self, *exc_info: object) -> None:
        if self._timeout == math.inf:
            return
        transport = self._transport
        transport._requests_in_flight -= 1  # pyright: ignore[reportPrivateUsage]
        if not transport._requests_in_flight:  # pyright: ignore[reportPrivateUsage]
            self._idle_since = self._loop.time()
            if not self._is_queued:
                self._is_queued = True
                self._holds.queue(self, self._idle_since + self._timeout)

    def expire_due(self, due: float) -> float:
        """End the session if it has been idle for its timeout by `due` (the loop's clock); else when it will have,
        or `math.inf` when the countdown is not this hold's to keep (in use, ended, or the SDK's again)."""
        idle = self._transport.idle_scope
        if idle is None or idle.cancel_called or self._transport._requests_in_flight or idle.deadline != math.inf:  # pyright: ignore[reportPrivateUsage]
            self._is_queued = False  # a request in it queues it again as it ends
            return math.inf
        ends = self._idle_since + self._timeout
        if ends > due:
            return ends
        self._is_queued = False
        idle.cancel()  # as its deadline would have: the SDK ends the session ("idle timeout")
        return math.inf


class IdleHolds:
    """The lane's holds on its sessions (one per session, kept with its connection) and the one timer that ends
    those idle for their timeout."""

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, weakref.ref[IdleHold]]] = []
        """(when to look, order, hold): a hold whose session is gone is dropped, unlooked at, when its turn comes."""
        self._order = itertools.count()
        self._timer: EarliestTimer | None = None
        """On the event loop the lane's sessions are held on (made at the first hold)."""

    def of(self, transport: StreamableHTTPServerTransport, state: dict[str, Any]) -> IdleHold:
        """The hold on the session of `transport`, kept in `state` (its downstream connection's)."""
        hold: IdleHold | None = state.get(_STATE_KEY)
        if hold is None:
            if self._timer is None:
                self._timer = EarliestTimer(asyncio.get_running_loop(), self._expire_due)
            hold = state[_STATE_KEY] = IdleHold(transport, self, self._timer.loop)
        return hold

    def __len__(self) -> int:
        """The countdowns queued (those of sessions ended since included, until their turn comes)."""
        return len(self._queue)

    def queue(self, hold: IdleHold, at: float) -> None:
        """Look at `hold`'s countdown at `at` (the loop's clock)."""
        heapq.heappush(self._queue, (at, next(self._order), weakref.ref(hold)))
        assert self._timer is not None  # queued by a hold, made with the timer
        self._timer.at(at)

    def _expire_due(self, due: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= due:
            _, _, held = heapq.heappop(queue)
            hold = held()
            if hold is None:
                continue
            try:
                after = hold.expire_due(due)
            except Exception:  # a bug in one hold: the loop's callback must go on keeping the others' countdowns
                logger.exception("a session's idle countdown failed; it starts again after the session's next request")
                hold._is_queued = False  # pyright: ignore[reportPrivateUsage]  # this module's own
                after = math.inf
            if after < math.inf:
                heapq.heappush(queue, (after, next(self._order), held))
        if queue:
            assert self._timer is not None
            self._timer.at(queue[0][0])
