"""A flag that is set once and never cleared, which tasks may wait for, costing next to nothing while nobody waits.

An `anyio.Event` on asyncio is an `asyncio.Event` with a `deque` for its waiters: about 0.75 KiB from the start. An
upstream session keeps three such flags for its whole life (ready, asked to stop, ended), and for most of it nobody
waits on two of them. A `Latch` makes its event only when a task waits while it is unset, and lets it go once set.
"""

from __future__ import annotations

import anyio
from anyio.lowlevel import checkpoint

__all__ = ["Latch"]


class Latch:
    __slots__ = ("_event", "_is_set")

    def __init__(self) -> None:
        self._is_set = False
        self._event: anyio.Event | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        """Set it, and wake every task waiting for it (from any task, or a plain callback)."""
        if self._is_set:
            return
        self._is_set = True
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self) -> None:
        """Return once it is set; a checkpoint even when it already is, as `anyio.Event.wait` is."""
        if self._is_set:
            await checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()
