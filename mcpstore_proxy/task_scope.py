"""A cancel scope for a request served in an asyncio task of its own: `Task.cancel()`, undone on the way out.

anyio's `CancelScope` keeps a tree of scopes per task and looks the task up on entering and on leaving: about 6%
of the instructions of a call in the fast lane, which needs a scope only so that something else can end the call
(its client hanging up or cancelling it, the drain's cut). `TaskCancelScope` is given its task and does nothing
until then.

Its cancellation is asyncio's, as `asyncio.timeout` does it: `cancel()` delivers one `CancelledError` to the
task; leaving the block swallows it (`cancelled_caught`) when it was this scope's own and the task has no other
cancellation pending (`Task.uncancel`). Any other cancellation passes through, and `cancel()` after the block
ended does nothing. Unlike anyio's, it is edge-triggered: code that catches the error and awaits again, as a
clean-up does, is not cancelled a second time.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Protocol

__all__ = ["Cancellable", "TaskCancelScope"]


class Cancellable(Protocol):
    """What ends a call early: an anyio `CancelScope` or a `TaskCancelScope`."""

    def cancel(self) -> None: ...


class TaskCancelScope:
    __slots__ = ("_is_cancelling", "_is_open", "_task", "cancelled_caught")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self._task = task
        self._is_open = False
        self._is_cancelling = False
        self.cancelled_caught = False

    def cancel(self) -> None:
        if self._is_open and not self._is_cancelling:
            self._is_cancelling = True
            self._task.cancel()

    def __enter__(self) -> TaskCancelScope:
        self._is_open = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        self._is_open = False
        if not self._is_cancelling:
            return False
        # Our request is withdrawn whatever became of it; another one still pending keeps the error going.
        if self._task.uncancel() == 0 and isinstance(error, asyncio.CancelledError):
            self.cancelled_caught = True
            return True
        return False
