"""An event loop on a thread of its own, where the SDK's engine (or its proxy connections) lives.

The SDK offers every call both ways, `use_tool` and `use_tool_async`, and the
sync calls must work even inside a program that already runs an event loop
(Jupyter). So the store's async world runs here, on one dedicated thread:
sync calls block on it; async calls, from any other loop, wait for it without
blocking their own loop. Contexts entered here stay owned by this loop's tasks.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Final, TypeVar

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal
from typing_extensions import TypeVarTuple, Unpack

__all__ = ["LoopThread"]

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")
_WAITERS: Final = 64
"""Async callers waiting at once; each waits on a worker thread so that its own loop runs on."""


class LoopThread:
    """A running event loop on a daemon thread, and the way in from sync and async code."""

    def __init__(self, name: str = "mcpstore") -> None:
        self._portal_context: AbstractContextManager[BlockingPortal] = start_blocking_portal(name=name)
        self._portal = self._portal_context.__enter__()
        self._entered: list[AbstractContextManager[object]] = []
        self._waiters = anyio.CapacityLimiter(_WAITERS)
        self._is_closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LoopThread {'closed' if self._is_closed else 'running'}, {len(self._entered)} contexts entered>"

    def call(self, function: Callable[[Unpack[_Args]], Awaitable[_T]], *args: *_Args) -> _T:
        """Run `function(*args)` on the loop and wait for it (blocking this thread)."""
        return self._portal.call(function, *args)

    async def call_async(self, function: Callable[[Unpack[_Args]], Awaitable[_T]], *args: *_Args) -> _T:
        """Run `function(*args)` on the loop; the caller's own loop runs on meanwhile. Cancelling cancels it."""
        future = self._portal.start_task_soon(function, *args)
        try:
            return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True, limiter=self._waiters)
        except anyio.get_cancelled_exc_class():
            future.cancel()
            raise

    def enter(self, context: AbstractAsyncContextManager[_T]) -> _T:
        """Enter an async context on the loop (a task there owns it) until `close()`."""
        wrapped = self._portal.wrap_async_context_manager(context)
        value = wrapped.__enter__()
        with self._lock:
            self._entered.append(wrapped)
        return value

    def close(self) -> None:
        """Leave every entered context (newest first), then stop the loop and its thread."""
        with self._lock:
            if self._is_closed:
                return
            self._is_closed = True
            entered, self._entered = self._entered, []
        try:
            for context in reversed(entered):
                context.__exit__(None, None, None)
        finally:
            self._portal_context.__exit__(None, None, None)
