"""asyncio's `Event` with its waiters in a list (`lean_events`)."""

from __future__ import annotations

import asyncio
import asyncio.locks
import tracemalloc

import anyio
import pytest

from mcpstore_proxy.lean_events import LeanEvent, lean_events

pytestmark = pytest.mark.anyio

_STDLIB_EVENT = asyncio.Event


async def test_setting_it_wakes_every_waiter_and_a_set_event_is_not_waited_for() -> None:
    event = LeanEvent()
    woken: list[int] = []

    async def wait(number: int) -> None:
        assert await event.wait()
        woken.append(number)

    async with anyio.create_task_group() as tasks:
        for number in range(3):
            tasks.start_soon(wait, number)
        await anyio.wait_all_tasks_blocked()
        assert len(event._waiters) == 3  # pyright: ignore[reportPrivateUsage]
        assert not woken
        event.set()
    assert sorted(woken) == [0, 1, 2]
    assert event.is_set()
    assert await event.wait()
    event.clear()
    assert not event.is_set()


async def test_a_cancelled_waiter_leaves_no_trace_and_the_event_still_works() -> None:
    event = LeanEvent()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(event.wait)
        await anyio.wait_all_tasks_blocked()
        assert len(event._waiters) == 1  # pyright: ignore[reportPrivateUsage]
        tasks.cancel_scope.cancel()
    assert event._waiters == []  # pyright: ignore[reportPrivateUsage]
    event.set()
    assert await event.wait()


def test_it_sets_what_the_stdlib_event_sets_and_nothing_else() -> None:
    assert set(vars(LeanEvent())) == set(vars(_STDLIB_EVENT()))


def test_it_holds_under_a_third_of_the_memory_of_the_stdlib_event() -> None:
    def bytes_for_a_thousand(make: type[asyncio.Event]) -> int:
        tracemalloc.start()
        try:
            events = [make() for _ in range(1000)]
            size, _ = tracemalloc.get_traced_memory()
            del events
        finally:
            tracemalloc.stop()
        return size

    assert bytes_for_a_thousand(LeanEvent) * 3 < bytes_for_a_thousand(_STDLIB_EVENT)


async def test_inside_the_block_every_event_made_through_the_module_is_lean_and_after_it_the_stdlib_one() -> None:
    with lean_events():
        assert type(asyncio.Event()) is LeanEvent
        assert type(asyncio.locks.Event()) is LeanEvent
        wrapped: object = getattr(anyio.Event(), "_event")  # noqa: B009  # anyio's own, on asyncio
        assert type(wrapped) is LeanEvent
    assert asyncio.Event is _STDLIB_EVENT
    assert asyncio.locks.Event is _STDLIB_EVENT
