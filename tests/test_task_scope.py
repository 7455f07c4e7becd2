"""`TaskCancelScope`, the fast lane's cancel scope: `Task.cancel()` for the call's own task, undone on the way
out; a cancellation from anywhere else passes through."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import anyio.lowlevel
import pytest

from mcpstore_proxy.task_scope import TaskCancelScope

pytestmark = pytest.mark.anyio


def _this_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None
    return task


async def test_a_cancelled_block_ends_there_and_the_task_runs_on_uncancelled() -> None:
    after: list[str] = []
    with anyio.fail_after(5), TaskCancelScope(_this_task()) as scope:
        scope.cancel()
        await anyio.sleep_forever()
    after.append("ran on")
    await anyio.lowlevel.checkpoint()  # no cancellation left pending for the task
    assert scope.cancelled_caught
    assert after == ["ran on"]
    assert _this_task().cancelling() == 0


async def test_a_block_that_is_not_cancelled_ends_as_it_would_have() -> None:
    with TaskCancelScope(_this_task()) as scope:
        await anyio.lowlevel.checkpoint()
    assert not scope.cancelled_caught
    with pytest.raises(LookupError), TaskCancelScope(_this_task()):
        raise LookupError("its own error")


async def test_a_cancellation_from_elsewhere_passes_through_even_when_the_scope_cancelled_too() -> None:
    seen: list[str] = []

    async def call(entered: anyio.Event, cancel_too: bool) -> None:
        try:
            with TaskCancelScope(_this_task()) as scope:
                entered.set()
                if cancel_too:
                    await anyio.lowlevel.checkpoint()  # the other cancellation lands first
                    scope.cancel()
                await anyio.sleep_forever()
        except asyncio.CancelledError:
            seen.append("passed through")
            raise

    for cancel_too in (False, True):
        entered = anyio.Event()
        task = asyncio.get_running_loop().create_task(call(entered, cancel_too))
        await entered.wait()
        task.cancel()  # as uvicorn cancels a request's task at its shutdown
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen == ["passed through", "passed through"]


async def test_cancel_after_the_block_ended_does_nothing() -> None:
    with TaskCancelScope(_this_task()) as scope:
        await anyio.lowlevel.checkpoint()
    scope.cancel()  # a hang-up noticed too late, say
    await anyio.lowlevel.checkpoint()
    assert _this_task().cancelling() == 0
    assert not scope.cancelled_caught


async def test_the_clean_up_after_a_cancellation_is_not_cancelled_again() -> None:
    cleaned: list[str] = []
    with anyio.fail_after(5), TaskCancelScope(_this_task()) as scope:
        scope.cancel()
        scope.cancel()  # twice: still one cancellation
        try:
            await anyio.sleep_forever()
        finally:
            await anyio.lowlevel.checkpoint()  # as the upstream is told of its cancelled request
            cleaned.append("told")
    assert cleaned == ["told"]
    assert scope.cancelled_caught


async def test_a_cancellation_the_block_swallowed_leaves_nothing_pending() -> None:
    with TaskCancelScope(_this_task()) as scope:
        scope.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # code that swallows it: the block ends normally
            await anyio.sleep_forever()
    assert not scope.cancelled_caught
    assert _this_task().cancelling() == 0
    await anyio.lowlevel.checkpoint()  # and nothing is delivered later
