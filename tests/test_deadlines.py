"""One timer for the deadlines of many waiters on a loop (mcpstore_proxy/deadlines.py): each waiter's deadline is
kept at its own time, however they interleave; a waiter with nothing left is let go, and so is one forgotten."""

from __future__ import annotations

import asyncio
import math

import anyio
import pytest

from mcpstore_proxy.deadlines import Deadlines

pytestmark = pytest.mark.anyio


class _Waiter:
    """Deadlines as a list of times; `expired` records the times it was asked to fail, and when."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *deadlines: float) -> None:
        self._loop = loop
        self.pending = sorted(deadlines)
        self.expired: list[tuple[float, float]] = []
        self.done = anyio.Event()

    def expire_due(self, due: float) -> float:
        while self.pending and self.pending[0] <= due:
            self.expired.append((self.pending.pop(0), self._loop.time()))
        if not self.pending:
            self.done.set()
        return self.pending[0] if self.pending else math.inf


async def test_each_waiters_deadlines_are_kept_at_their_own_time_by_one_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    now = loop.time()
    late = _Waiter(loop, now + 0.2)
    early = _Waiter(loop, now + 0.05, now + 0.1)

    deadlines.watch(late, now + 0.2)
    deadlines.watch(early, now + 0.05)  # earlier than the timer was armed for: it is armed again, sooner
    with anyio.fail_after(5):
        await early.done.wait()
        assert late.expired == []
        await late.done.wait()

    for waiter in (early, late):
        for deadline, when in waiter.expired:
            assert when >= deadline - 0.002  # never failed before its time (a timer may fire a millisecond early)
    assert len(deadlines) == 0  # both let go once they had nothing left


async def test_a_forgotten_waiter_is_asked_nothing_more() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    now = loop.time()
    closed, open_ = _Waiter(loop, now + 0.05), _Waiter(loop, now + 0.1)
    deadlines.watch(closed, now + 0.05)
    deadlines.watch(open_, now + 0.1)

    deadlines.forget(closed)
    with anyio.fail_after(5):
        await open_.done.wait()

    assert closed.expired == []
    assert [deadline for deadline, _ in open_.expired] == [now + 0.1]


async def test_each_event_loop_has_one_timer_for_its_deadlines() -> None:
    loop = asyncio.get_running_loop()

    assert Deadlines.of(loop) is Deadlines.of(loop)
