"""The deadlines of many waiters on one event loop, kept by one timer armed for the earliest.

A timer per request is made and cancelled on every call (uvloop's cancel alone is about 460 instructions), and a
timer per upstream session stays armed after its last call until that call's deadline: 0.6 KiB for each session
used lately. One timer for the loop costs neither: a waiter says when its next deadline is (`watch`), and when the
timer fires each waiter fails what is due and says when its next one is (`expire_due`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import weakref
from collections.abc import Callable
from typing import ClassVar, Final, Protocol

__all__ = ["Deadlines", "EarliestTimer", "Expiring"]

logger = logging.getLogger(__name__)

_SLACK_SECONDS: Final = 0.001
"""A timer may fire up to a millisecond early (uvloop's are in milliseconds): a deadline that close is past."""


class EarliestTimer:
    """One event loop timer, armed for the earliest time it is asked for (`at`); when it fires it calls `fire` with
    what is due by then (the loop's clock, a millisecond's slack included), and is free to be armed again."""

    __slots__ = ("_fire", "_timer", "earliest", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[float], None]) -> None:
        self.loop = loop
        self._fire = fire
        self._timer: asyncio.TimerHandle | None = None
        self.earliest = math.inf
        """When it fires next (`math.inf`: not armed)."""

    def at(self, when: float) -> None:
        """Fire at `when` if that is earlier than it would (the loop's clock)."""
        if when < self.earliest:
            if self._timer is not None:
                self._timer.cancel()
            self.earliest = when
            # In a context of its own: armed by a request, it would keep that request's context (its scope, its
            # operation) until it fires, a session's idle timeout away.
            self._timer = self.loop.call_at(when, self._fired, context=contextvars.Context())

    def _fired(self) -> None:
        self._timer, self.earliest = None, math.inf
        self._fire(self.loop.time() + _SLACK_SECONDS)


class Expiring(Protocol):
    def expire_due(self, due: float) -> float:
        """Fail what is due by `due` (the loop's clock); the next deadline after that, or `math.inf` for none."""
        ...


class Deadlines:
    """One event loop's timer for the deadlines of its waiters (`of` gives the loop's own)."""

    __slots__ = ("_timer", "_waiters", "loop")

    _OF_LOOP: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines]] = weakref.WeakKeyDictionary()
    _last: ClassVar[Deadlines | None] = None
    """The one `of` gave last: asked for on every call, for the same loop, and a weak dict's lookup makes a weak
    reference each time. (It keeps that loop alive until another asks: one loop, not a growing set.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._timer = EarliestTimer(loop, self._expire_due)
        self._waiters: set[Expiring] = set()
        """Those with a deadline to keep: held until the timer finds they have none left (or `forget`)."""

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Deadlines:
        last = Deadlines._last
        if last is not None and last.loop is loop:
            return last
        deadlines = cls._OF_LOOP.get(loop)
        if deadlines is None:
            deadlines = cls._OF_LOOP[loop] = cls(loop)
        Deadlines._last = deadlines
        return deadlines

    def __len__(self) -> int:
        return len(self._waiters)

    def watch(self, waiter: Expiring, deadline: float) -> None:
        """`waiter` has a deadline at `deadline` (the loop's clock): it is asked to expire what is due by then."""
        self._waiters.add(waiter)
        if deadline < self._timer.earliest:  # the usual case, a later one, without a call
            self._timer.at(deadline)

    def forget(self, waiter: Expiring) -> None:
        """`waiter` has nothing left to expire (it was closed)."""
        self._waiters.discard(waiter)

    def _expire_due(self, due: float) -> None:
        earliest = math.inf
        for waiter in list(self._waiters):
            try:
                after = waiter.expire_due(due)
            except Exception:  # a bug in one waiter: the loop's callback must go on keeping the others' deadlines
                logger.exception("a deadline's waiter failed; it is let go")
                after = math.inf
            if after == math.inf:
                self._waiters.discard(waiter)
            elif after < earliest:
                earliest = after
        if earliest < math.inf:
            self._timer.at(earliest)
