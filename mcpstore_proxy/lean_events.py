"""asyncio's `Event` with its waiters in a list: 0.7 KiB less for every event, and an idle session holds about ten.

CPython's `asyncio.Event` keeps its waiters in a `collections.deque`, whose first block (64 slots) is allocated with
it: 760 bytes per event, whether anything ever waits on it or not. An idle session of the proxy holds about ten
(uvicorn makes one per request and one per connection; anyio's events in the SDK's streams, sessions and task
groups wrap one each): 8 KiB of the 81 KiB of Python objects it holds. `LeanEvent` keeps them in a list (56 bytes
empty). `Event` only appends to, removes from and iterates over its waiters, which a list does alike; an event
seldom has more than one waiter, so `remove` costs what the deque's does.

`lean_events()` makes it the process's `asyncio.Event` while its block runs. Only `serve` and `stdio` use it (as
they tune the collector); embedding the proxy leaves the host's asyncio alone.
"""

from __future__ import annotations

import asyncio
import asyncio.locks
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

__all__ = ["LeanEvent", "lean_events"]


class LeanEvent(asyncio.Event):
    """An `asyncio.Event` whose waiters are kept in a list rather than a deque."""

    def __init__(self) -> None:
        # Not `super().__init__()`: it would make the deque this class exists to spare (a test pins that the
        # stdlib's sets nothing else).
        self._value = False
        self._waiters: Any = []


@contextmanager
def lean_events() -> Generator[None]:
    """Make `asyncio.Event()` a `LeanEvent` while the block runs, anywhere it is looked up through the module."""
    stdlib = asyncio.Event
    asyncio.Event = asyncio.locks.Event = LeanEvent
    try:
        yield
    finally:
        asyncio.Event = asyncio.locks.Event = stdlib
