"""A wall clock that moves only when a test says so (a `mcpstore_proxy.clock.Clock`)."""

from __future__ import annotations

import anyio

__all__ = ["ManualClock"]

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
