"""A flag that is set once and never cleared, which tasks may wait for, costing next to nothing while nobody waits.

An `anyio.Event` on asyncio is an `asyncio.Event` with a `deque` for its waiters: about 0.75 KiB from the start,
and 1.5 KiB once a task waits. An upstream session keeps three such flags for its whole life (ready, asked to
stop, ended), and its own task waits on one of them all that time. A `Latch` keeps a bare future per waiting task
(0.2 KiB), made when it starts waiting and dropped when it is woken or cancelled. The proxy runs on asyncio.
"""

from __future__ import annotations

import asyncio

from anyio.lowlevel import checkpoint

__all__ = ["Latch"]


class Latch:
    __slots__ = ("_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        """Set it, and wake every task waiting for it (from any task, or a plain callback on its loop)."""
        if self._is_set:
            return
        self._is_set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():  # done: its task was cancelled, and is on its way out
                waiter.set_result(None)

    async def wait(self) -> None:
        """Return once it is set; a checkpoint even when it already is, as `anyio.Event.wait` is."""
        if self._is_set:
            await checkpoint()
            return
        # Each waiter's own future: cancelling one task cancels its future alone, never another waiter's.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is waiters:  # not set meanwhile: this task gave up
                waiters.remove(waiter)
                if not waiters:
                    self._waiters = None
