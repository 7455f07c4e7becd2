"""Telling sniffio, once, that the thread serving runs asyncio.

anyio asks which event loop it runs on for every cancel scope, event, lock and clock reading it makes: through
sniffio when that is installed, which then looks for the current asyncio task (a `getpid` system call each time)
whenever its context variable is unset, as it is in the tasks uvicorn starts for requests. A forwarded call made
nine such lookups. sniffio's documented `thread_local.name`, which trio sets for its own thread, answers them at
once. Without sniffio, anyio asks asyncio directly and there is nothing to do.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

__all__ = ["sniffed_as_asyncio"]


@contextmanager
def sniffed_as_asyncio() -> Generator[None]:
    """While the block runs, sniffio answers "asyncio" in this thread (enter it on the event loop's thread)."""
    try:
        from sniffio import thread_local
    except ImportError:
        yield
        return
    previous = thread_local.name
    thread_local.name = "asyncio"
    try:
        yield
    finally:
        thread_local.name = previous
