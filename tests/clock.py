"""Clocks that move only when a test says so: a wall clock (a `mcpstore_proxy.clock.Clock`), and an event loop's."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel

__all__ = ["LoopClock", "ManualClock"]

_START = 1_800_000_000.0
"""An arbitrary epoch second (2027-01-15); what matters is only that it moves by hand."""


class ManualClock:
    """Time stands still until `advance()`; sleepers wake once it has moved past their deadline."""

    def __init__(self, now: float = _START) -> None:
        self._now = now
        self._moved = anyio.Event()

    def __repr__(self) -> str:
        return f"<ManualClock at {self._now:.3f}>"

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._moved.set()
        self._moved = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + seconds
        while self._now < deadline:
            await self._moved.wait()


class LoopClock:
    """The running asyncio loop's own clock, moved forward by hand (`advance`) while the block runs: the loop's
    timers due by the moved time fire at its next turn, so a deadline of a minute passes without a minute's wait.

    It shadows the loop's `time` (a plain asyncio loop's method), which the loop reads both to arm its timers and
    to see which are due. A time limit (`anyio.fail_after`) belongs inside the block, counting the time moved: one
    outside it is passed silently (it is cancelled by the moved clock, then judged by the wall clock, unexpired)."""

    def __init__(self) -> None:
        self._skew = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shadowed: object = None
        """What stood for the loop's `time` before (another clock's), put back on the way out."""

    def __enter__(self) -> LoopClock:
        loop = self._loop = asyncio.get_running_loop()
        self._shadowed = vars(loop).get("time")
        wall = loop.time
        loop.time = lambda: wall() + self._skew  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None
        if self._shadowed is None:
            del self._loop.time  # the loop's own method again
        else:
            self._loop.time = self._shadowed  # type: ignore[method-assign]

    def move(self, seconds: float) -> None:
        """Move the clock; the loop's timers due by then fire at its next turn (see `advance` to wait for that)."""
        self._skew += seconds

    async def advance(self, seconds: float) -> None:
        """Move the clock, then let the loop turn (its timers due by then fire) until every task waits again."""
        self.move(seconds)
        await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
