"""Tasks an owner starts and, when its block ends, asks to stop and waits for (`OwnedTasks`)."""

from __future__ import annotations

import asyncio
import contextvars

import anyio
import anyio.lowlevel
import pytest

from mcpstore_proxy.owned_tasks import OwnedTasks

pytestmark = pytest.mark.anyio

_WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


class _Idle:
    """A task's work that runs until asked to stop, then cleans up (with an await, as closing an upstream does)."""

    def __init__(self, what: str, cleaned_up: list[str]) -> None:
        self.what = what
        self.cleaned_up = cleaned_up
        self.started = anyio.Event()
        self.asked = anyio.Event()

    async def run(self) -> None:
        self.started.set()
        try:
            await self.asked.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # a clean-up that awaits: the owner must wait past it
            self.cleaned_up.append(self.what)


async def test_a_task_runs_in_the_owners_context_not_the_callers() -> None:
    seen: list[str] = []

    async def note() -> None:
        seen.append(_WHO.get())

    owners = contextvars.copy_context()  # before the caller sets its own
    _WHO.set("the request")
    async with OwnedTasks() as tasks:
        task = tasks.start_soon(note(), name="note", stop=lambda: None, context=owners)
        await task
    assert seen == ["nobody"]


async def test_leaving_the_block_asks_each_running_task_to_stop_and_waits_for_its_clean_up() -> None:
    cleaned_up: list[str] = []
    async with OwnedTasks() as tasks:
        for what in ("a", "b"):
            idle = _Idle(what, cleaned_up)
            tasks.start_soon(idle.run(), name=what, stop=idle.asked.set)
            await idle.started.wait()
        assert len(tasks) == 2
    assert sorted(cleaned_up) == ["a", "b"]
    assert len(tasks) == 0


async def test_the_owner_being_cancelled_does_not_cut_its_tasks_clean_up_short() -> None:
    cleaned_up: list[str] = []
    with anyio.CancelScope() as scope:
        async with OwnedTasks() as tasks:
            idle = _Idle("a", cleaned_up)
            tasks.start_soon(idle.run(), name="a", stop=idle.asked.set)
            await idle.started.wait()
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert cleaned_up == ["a"]


async def test_a_task_that_fails_is_logged_and_nothing_reaches_the_owner(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise ValueError("broken upstream")

    async with OwnedTasks() as tasks:
        task = tasks.start_soon(fail(), name="failing", stop=lambda: None)
        await asyncio.wait([task])
    assert any("'failing' failed" in record.message for record in caplog.records)


async def test_a_stop_that_raises_is_logged_and_the_other_tasks_are_still_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cleaned_up: list[str] = []
    first, second = _Idle("a", cleaned_up), _Idle("b", cleaned_up)

    def broken() -> None:
        first.asked.set()
        raise RuntimeError("its stop is broken")

    async with OwnedTasks() as tasks:
        tasks.start_soon(first.run(), name="a", stop=broken)
        tasks.start_soon(second.run(), name="b", stop=second.asked.set)
        await first.started.wait()
        await second.started.wait()
    assert sorted(cleaned_up) == ["a", "b"]
    assert any("could not ask a task to stop" in record.message for record in caplog.records)


async def test_a_task_started_after_the_block_ended_is_asked_to_stop_at_once() -> None:
    cleaned_up: list[str] = []
    async with OwnedTasks() as tasks:
        pass
    idle = _Idle("late", cleaned_up)
    task = tasks.start_soon(idle.run(), name="late", stop=idle.asked.set)
    with anyio.fail_after(5):
        await asyncio.wait([task])
    assert cleaned_up == ["late"]
