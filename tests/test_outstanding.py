"""`Outstanding`: a count of work in progress, and a wait until none is left."""

from __future__ import annotations

import anyio
import pytest

from mcpstore_proxy.outstanding import Outstanding

pytestmark = pytest.mark.anyio


async def test_with_nothing_outstanding_the_wait_returns_at_once() -> None:
    outstanding = Outstanding()
    with anyio.fail_after(1):
        await outstanding.none_left()
    assert len(outstanding) == 0


async def test_every_waiter_wakes_when_the_last_unit_ends_and_not_before() -> None:
    outstanding = Outstanding()
    woken: list[str] = []
    first_done, second_done = anyio.Event(), anyio.Event()

    async def waiter(name: str) -> None:
        await outstanding.none_left()
        woken.append(name)

    async def unit(done: anyio.Event) -> None:
        with outstanding:
            await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(unit, first_done)
        tg.start_soon(unit, second_done)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiter, "a")
        tg.start_soon(waiter, "b")
        await anyio.wait_all_tasks_blocked()
        first_done.set()
        await anyio.wait_all_tasks_blocked()
        assert (woken, len(outstanding)) == ([], 1)
        second_done.set()
    assert sorted(woken) == ["a", "b"]


async def test_a_new_round_of_work_gets_a_wait_of_its_own() -> None:
    outstanding = Outstanding()
    rounds_seen_idle: list[int] = []

    for round_number in range(2):
        release = anyio.Event()

        async def unit(release: anyio.Event = release) -> None:
            with outstanding:
                await release.wait()

        async def waiter(round_number: int = round_number) -> None:
            await outstanding.none_left()
            rounds_seen_idle.append(round_number)

        async with anyio.create_task_group() as tg:
            tg.start_soon(unit)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert rounds_seen_idle == list(range(round_number))  # the last round's set event does not count
            release.set()
    assert rounds_seen_idle == [0, 1]
