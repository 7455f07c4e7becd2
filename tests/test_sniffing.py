"""Telling sniffio, once, that the serving thread runs asyncio (`sniffing`)."""

from __future__ import annotations

import threading

import pytest
import sniffio

from mcpstore_proxy.sniffing import sniffed_as_asyncio

pytestmark = pytest.mark.anyio


async def test_inside_the_block_this_thread_is_asyncio_without_a_lookup_and_afterwards_as_before() -> None:
    assert sniffio.thread_local.name is None
    with sniffed_as_asyncio():
        assert sniffio.thread_local.name == "asyncio"
        assert sniffio.current_async_library() == "asyncio"
    assert sniffio.thread_local.name is None


async def test_other_threads_still_find_no_event_loop() -> None:
    seen: list[str] = []

    def ask() -> None:
        try:
            seen.append(sniffio.current_async_library())
        except sniffio.AsyncLibraryNotFoundError:
            seen.append("none")

    with sniffed_as_asyncio():
        thread = threading.Thread(target=ask)
        thread.start()
        thread.join()
    assert seen == ["none"]
