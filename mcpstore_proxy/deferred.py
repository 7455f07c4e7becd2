"""Work a request needs only once it has run a while (watching for a hang-up, keeping a silent answer alive): a
deadline with the event loop's one timer for deadlines until then, then one bare asyncio task, both given up when
the block ends.

Most calls are answered within milliseconds and then cost an entry in a set, not a timer or a task. A timer of
their own (uvloop's, made, cancelled and closed on every call, about 0.4 µs of the loop's time each) was one of
two per call whose removal took the proxy's CPU per call at c=1 to 0.92 of what it was, in a same-run A/B. The
loop's timer (`deadlines.Deadlines`) is armed for the earliest deadline of what is still waiting, so it fires
about once per `after_seconds` however many calls come and go. The task is bare asyncio, not anyio: these
requests are only ever served by uvicorn on asyncio, and an anyio task group per call cost several times as much.
Nothing awaits it, so its work must never raise (`_run`).
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod

from mcpstore_proxy.deadlines import Deadlines

__all__ = ["Deferred"]


class Deferred(ABC):
    """While the block runs: `_run()` in a task of its own, once the block has run `after_seconds`."""

    __slots__ = ("_after_seconds", "_deadlines", "_loop", "_start_at", "_task")

    def __init__(self, after_seconds: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._after_seconds = after_seconds
        self._loop = loop
        """The running loop, where the caller knows it (asking for it costs a system call on 3.11)."""
        self._deadlines: Deadlines | None = None
        self._start_at = math.inf
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> None:
        deadlines = self._deadlines = Deadlines.of(self._loop or asyncio.get_running_loop())
        self._start_at = deadlines.loop.time() + self._after_seconds
        deadlines.watch(self, self._start_at)

    def __exit__(self, *exc_info: object) -> None:
        if self._deadlines is not None:
            self._deadlines.forget(self)
        if self._task is not None:
            self._task.cancel()

    def expire_due(self, due: float) -> float:
        """Start the work if the block has run its while by `due` (see `Deadlines`); else when it will have."""
        if self._start_at > due:
            return self._start_at
        assert self._deadlines is not None  # watched only once entered
        loop = self._deadlines.loop
        self._task = loop.create_task(self._run(loop))
        return math.inf

    @abstractmethod
    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """The deferred work; never raises (nothing awaits it)."""
