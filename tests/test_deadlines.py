"""One timer for the deadlines of many waiters on a loop (mcpstore_proxy/deadlines.py): each waiter's deadline is
kept at its own time, however they interleave; a waiter with nothing left is let go, and so is one forgotten.

The loop is a manual one (its clock and its one kind of timer), so nothing here waits on the wall clock."""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Callable
from typing import Any, cast

import pytest

from mcpstore_proxy.deadlines import Deadlines, EarliestTimer


class _Timer:
    def __init__(self, at: float, callback: Callable[[], None], context: contextvars.Context | None) -> None:
        self.at = at
        self.callback = callback
        self.context = context if context is not None else contextvars.copy_context()  # as the loop does
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _ManualLoop:
    """What `Deadlines` uses of an event loop, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[_Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, callback: Callable[[], None], *, context: contextvars.Context | None = None) -> _Timer:
        timer = _Timer(at, callback, context)
        self.timers.append(timer)
        return timer

    def armed(self) -> list[float]:
        return [timer.at for timer in self.timers if not timer.cancelled]

    def advance_to(self, now: float) -> None:
        """Move the clock, running each timer due by then, in order, as the loop would."""
        while due := sorted((t for t in self.timers if not t.cancelled and t.at <= now), key=lambda t: t.at):
            timer = due[0]
            self.timers.remove(timer)
            self.now = timer.at
            timer.context.run(timer.callback)
        self.now = now


class _Waiter:
    """Deadlines as a list of times; `expired` records each one failed, with the clock when it was."""

    def __init__(self, loop: _ManualLoop, *deadlines: float) -> None:
        self._loop = loop
        self.pending = sorted(deadlines)
        self.expired: list[tuple[float, float]] = []

    def expire_due(self, due: float) -> float:
        while self.pending and self.pending[0] <= due:
            self.expired.append((self.pending.pop(0), self._loop.time()))
        return self.pending[0] if self.pending else math.inf


_ARMED_BY: contextvars.ContextVar[str] = contextvars.ContextVar("armed_by", default="no one")


def _deadlines(loop: _ManualLoop) -> Deadlines:
    return Deadlines(cast(asyncio.AbstractEventLoop, cast(Any, loop)))


def test_each_waiters_deadlines_are_kept_at_their_own_time_by_one_timer() -> None:
    loop = _ManualLoop()
    deadlines = _deadlines(loop)
    late = _Waiter(loop, 100.2)
    early = _Waiter(loop, 100.05, 100.1)

    deadlines.watch(late, 100.2)
    deadlines.watch(early, 100.05)  # earlier than the timer was armed for: armed again, sooner
    assert loop.armed() == [100.05]
    loop.advance_to(100.15)

    assert early.expired == [(100.05, 100.05), (100.1, 100.1)]
    assert late.expired == []
    assert loop.armed() == [100.2]
    loop.advance_to(101.0)
    assert late.expired == [(100.2, 100.2)]
    assert loop.armed() == []  # nothing left to keep: no timer
    assert len(deadlines) == 0  # and both waiters let go


def test_a_later_deadline_does_not_move_the_timer() -> None:
    loop = _ManualLoop()
    deadlines = _deadlines(loop)
    first, second = _Waiter(loop, 100.1), _Waiter(loop, 100.3)

    deadlines.watch(first, 100.1)
    deadlines.watch(second, 100.3)

    assert loop.armed() == [100.1]
    assert len(loop.timers) == 1  # not made again for a deadline after the armed one


def test_a_forgotten_waiter_is_asked_nothing_more() -> None:
    loop = _ManualLoop()
    deadlines = _deadlines(loop)
    closed, open_ = _Waiter(loop, 100.05), _Waiter(loop, 100.1)
    deadlines.watch(closed, 100.05)
    deadlines.watch(open_, 100.1)

    deadlines.forget(closed)
    loop.advance_to(101.0)

    assert closed.expired == []
    assert open_.expired == [(100.1, 100.1)]


@pytest.mark.anyio
async def test_each_event_loop_has_one_timer_for_its_deadlines() -> None:
    loop = asyncio.get_running_loop()

    assert Deadlines.of(loop) is Deadlines.of(loop)


class _Broken:
    def expire_due(self, due: float) -> float:
        raise RuntimeError("a bug in a waiter")


def test_a_waiter_that_fails_is_logged_and_let_go_and_the_others_deadlines_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = _ManualLoop()
    deadlines = _deadlines(loop)
    broken, kept = _Broken(), _Waiter(loop, 100.05, 100.2)
    deadlines.watch(broken, 100.05)
    deadlines.watch(kept, 100.05)

    loop.advance_to(101.0)  # the timer's callback raises nothing into the loop

    assert kept.expired == [(100.05, 100.05), (100.2, 100.2)]
    assert len(deadlines) == 0
    assert "a deadline's waiter failed" in caplog.text


def test_the_timer_fires_in_a_context_of_its_own_not_in_the_one_of_whoever_armed_it() -> None:
    # A request arms it, and its context (the request's scope, its operation) must not be kept until it fires.
    loop = _ManualLoop()
    seen: list[str] = []
    timer = EarliestTimer(cast(asyncio.AbstractEventLoop, cast(Any, loop)), lambda _: seen.append(_ARMED_BY.get()))
    token = _ARMED_BY.set("a request")
    try:
        timer.at(101.0)
    finally:
        _ARMED_BY.reset(token)
    loop.advance_to(102.0)
    assert seen == ["no one"]
