"""Wall-clock time for session expiry, behind a seam so tests can move it by hand.

Named sessions expire by wall-clock epoch seconds (what `session_info`
reports is what expiry uses). Everything that reads that time, or sleeps
until it passes, goes through a `Clock`.
"""

from __future__ import annotations

import time
from typing import Final, Protocol

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


SYSTEM_CLOCK: Final = SystemClock()
