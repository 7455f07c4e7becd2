"""Work a request needs only once it has run a while (watching for a hang-up, keeping a silent answer alive): a
timer until then, then one bare asyncio task, both cancelled when the block ends.

Most calls are answered within milliseconds and then cost a timer, not a task. The task is bare asyncio, not
anyio: these requests are only ever served by uvicorn on asyncio, and an anyio task group per call cost several
times as much. Nothing awaits it, so its work must never raise (`_run`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

__all__ = ["Deferred"]


class Deferred(ABC):
    """While the block runs: `_run()` in a task of its own, once the block has run `after_seconds`."""

    __slots__ = ("_after_seconds", "_loop", "_task", "_timer")

    def __init__(self, after_seconds: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._after_seconds = after_seconds
        self._loop = loop
        """The running loop, where the caller knows it (asking for it costs a system call on 3.11)."""
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._timer = loop.call_later(self._after_seconds, self._start, loop)

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run(loop))

    @abstractmethod
    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """The deferred work; never raises (nothing awaits it)."""
