"""Work a request needs only once it has run a while (watching for a hang-up, keeping a silent answer alive): a
deadline on the loop's one timer until then (see `deadlines`), then one bare asyncio task, cancelled when the
block ends.

Most calls are answered within milliseconds and then cost a deadline noted and forgotten, not a timer made and
cancelled (about 1.7 µs with uvloop) nor a task. The task is bare asyncio, not anyio: these requests are only
ever served by uvicorn on asyncio, and an anyio task group per call cost several times as much. Nothing awaits it,
so its work must never raise (`_run`).
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod

from mcpstore_proxy.deadlines import Deadlines

__all__ = ["Deferred"]


class Deferred(ABC):
    """While the block runs: `_run()` in a task of its own, once the block has run `after_seconds`."""

    __slots__ = ("_after_seconds", "_deadlines", "_due", "_task")

    def __init__(self, after_seconds: float, deadlines: Deadlines | None = None) -> None:
        self._after_seconds = after_seconds
        self._deadlines = deadlines
        """The running loop's deadlines, where the caller has them (asking for the loop is a system call on
        3.11)."""
        self._due = math.inf
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> None:
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = Deadlines.of(asyncio.get_running_loop())
        self._due = deadlines.loop.time() + self._after_seconds
        deadlines.watch(self, self._due)

    def __exit__(self, *exc_info: object) -> None:
        if self._deadlines is not None:
            self._deadlines.forget(self)
        if self._task is not None:
            self._task.cancel()

    def expire_due(self, due: float) -> float:
        """Start the work if the block has run its while by `due` (see `Expiring`)."""
        if self._due > due:
            return self._due
        if self._task is None and self._deadlines is not None:
            loop = self._deadlines.loop
            self._task = loop.create_task(self._run(loop))
        return math.inf

    @abstractmethod
    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """The deferred work; never raises (nothing awaits it)."""
