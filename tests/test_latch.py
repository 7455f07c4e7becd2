"""A latch wakes every task waiting for it once set, stays set, and holds no event while nobody waits."""

from __future__ import annotations

import anyio
import pytest

from mcpstore_proxy.latch import Latch

pytestmark = pytest.mark.anyio


async def test_setting_it_wakes_every_task_waiting_for_it() -> None:
    latch = Latch()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await latch.wait()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(waiter, n)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        latch.set()

    assert sorted(woken) == [0, 1, 2]
    assert latch.is_set()


async def test_once_set_a_wait_returns_at_once_and_a_second_set_changes_nothing() -> None:
    latch = Latch()
    latch.set()
    latch.set()

    with anyio.fail_after(1):
        await latch.wait()

    assert latch.is_set()


async def test_a_wait_on_a_set_latch_is_still_a_checkpoint_where_cancellation_lands() -> None:
    latch = Latch()
    latch.set()

    with anyio.CancelScope() as scope:
        scope.cancel()
        await latch.wait()
        pytest.fail("the wait did not check for cancellation")

    assert scope.cancelled_caught


async def test_it_holds_something_only_while_a_task_waits_for_it() -> None:
    latch = Latch()
    assert latch._waiters is None  # pyright: ignore[reportPrivateUsage]

    async with anyio.create_task_group() as tg:
        tg.start_soon(latch.wait)
        await anyio.wait_all_tasks_blocked()
        assert latch._waiters is not None  # pyright: ignore[reportPrivateUsage]
        latch.set()

    assert latch._waiters is None  # pyright: ignore[reportPrivateUsage]


async def test_a_waiter_that_gives_up_lets_go_of_what_it_held_and_wakes_nobody() -> None:
    latch = Latch()

    with anyio.move_on_after(0):
        await latch.wait()

    assert latch._waiters is None  # pyright: ignore[reportPrivateUsage]
    assert not latch.is_set()


async def test_cancelling_one_waiter_leaves_the_others_waiting_until_it_is_set() -> None:
    latch = Latch()
    woken: list[str] = []

    async def waiter(name: str) -> None:
        await latch.wait()
        woken.append(name)

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as impatient:
            async with anyio.create_task_group() as inner:
                inner.start_soon(waiter, "impatient")
                tg.start_soon(waiter, "patient")
                await anyio.wait_all_tasks_blocked()
                impatient.cancel()
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        latch.set()

    assert woken == ["patient"]


async def test_a_cancelled_waiter_leaves_the_latch_usable_for_the_next() -> None:
    latch = Latch()
    with anyio.move_on_after(0):
        await latch.wait()
    assert not latch.is_set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(latch.wait)
        await anyio.wait_all_tasks_blocked()
        latch.set()

    assert latch.is_set()
