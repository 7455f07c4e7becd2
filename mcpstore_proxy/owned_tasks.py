"""Tasks an owner starts and, when its block ends, asks to stop and waits for: anyio's task group for tasks that
never raise and each know how to stop, without what anyio keeps per task.

anyio's task group gives each task it starts a cancel scope of its own, a wrapper coroutine and a callback: about
1 KiB beside the task, for as long as it runs. An upstream session's owner task runs as long as its session, so an
idle session paid that. `OwnedTasks` starts plain asyncio tasks, each in a copy of the context given (the owner's
own, not the caller's), and on leaving its block asks each one still running to stop, with the function given for
it (an upstream session's `close_soon`), and waits for them, shielded from the owner's own cancellation.

Asked, not cancelled: asyncio's cancellation does not respect anyio's shields, under which a task starts or stops an
upstream process, so a cancelled task could leave one behind. Each task stops as it would when closed any other
way, and its clean-up is bounded there. A task that fails is logged when it ends; nothing is raised into the owner.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self

import anyio

__all__ = ["OwnedTasks"]

logger = logging.getLogger(__name__)


class OwnedTasks:
    __slots__ = ("_is_closed", "_tasks")

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[None], Callable[[], None]] = {}
        """Each running task, and how to ask it to stop."""
        self._is_closed = False

    def __repr__(self) -> str:
        return f"<OwnedTasks {len(self._tasks)} running{', closed' if self._is_closed else ''}>"

    def __len__(self) -> int:
        return len(self._tasks)

    def start_soon(
        self,
        work: Coroutine[Any, Any, None],
        *,
        name: str,
        stop: Callable[[], None],
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[None]:
        """Run `work` in a task of its own (in a copy of `context`, else of the caller's); `stop()` asks it to end.
        Once the block has ended, it is asked at once, as a task group shutting down cancels what it starts."""
        task = asyncio.get_running_loop().create_task(work, name=name, context=context.copy() if context else None)
        self._tasks[task] = stop
        task.add_done_callback(self._ended)
        if self._is_closed:
            stop()
        return task

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._is_closed = True
        running = list(self._tasks.items())
        for _, stop in running:
            try:
                stop()
            except Exception:  # one task's broken stop must not keep the others running
                logger.exception("could not ask a task to stop")
        if running:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task for task, _ in running])

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("task %r failed", task.get_name(), exc_info=error)
