"""A count of work in progress, and a wait until none is left.

The drain at shutdown, a reload retiring an upstream, the front door and a relay letting an upstream's forwards
catch up all need this shape. The event the wait needs is made only when something waits: a unit of work costs
two integer updates, not an event (an asyncio `Event` with its `deque`, about 0.7 KiB) per call.
"""

from __future__ import annotations

import anyio

__all__ = ["Outstanding"]


class Outstanding:
    """`with outstanding:` counts one unit of work while the block runs; `await outstanding.none_left()` returns
    once the count has fallen to zero (at once when it is zero)."""

    __slots__ = ("_count", "_none_left")

    def __init__(self) -> None:
        self._count = 0
        self._none_left: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Outstanding {self._count}>"

    def __len__(self) -> int:
        return self._count

    def __enter__(self) -> None:
        self._count += 1

    def __exit__(self, *exc_info: object) -> None:
        self._count -= 1
        if not self._count and self._none_left is not None:
            self._none_left.set()

    async def none_left(self) -> None:
        if not self._count:
            return
        if self._none_left is None or self._none_left.is_set():
            self._none_left = anyio.Event()  # one event for every waiter of this round
        await self._none_left.wait()
