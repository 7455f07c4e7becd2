"""`HangUpWatch`: a client hanging up its request cancels the call it was waiting for, whatever way the request's
connection says so; a call answered first leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import anyio
import pytest

from mcpstore_proxy.deadlines import Deadlines
from mcpstore_proxy.hangup import HangUpWatch
from tests.clock import LoopClock

pytestmark = pytest.mark.anyio


class _Connection:
    """An ASGI `receive` fed by the test, as uvicorn's would be by the client."""

    def __init__(self) -> None:
        self._messages: deque[Mapping[str, Any] | Exception] = deque()
        self._arrived = anyio.Event()
        self.read = anyio.Event()
        """Set once something reads the connection (the watch has started)."""

    async def receive(self) -> Mapping[str, Any]:
        self.read.set()
        while not self._messages:
            await self._arrived.wait()
            self._arrived = anyio.Event()
        message = self._messages.popleft()
        if isinstance(message, Exception):
            raise message
        return message

    def says(self, message: Mapping[str, Any] | Exception) -> None:
        self._messages.append(message)
        self._arrived.set()


async def test_a_hang_up_cancels_the_call_even_after_other_messages_on_its_connection() -> None:
    connection = _Connection()
    connection.says({"type": "http.request", "body": b"", "more_body": False})
    connection.says({"type": "http.disconnect"})
    with anyio.fail_after(5), anyio.CancelScope() as call, HangUpWatch(connection.receive, call, after_seconds=0):
        await anyio.sleep_forever()
    assert call.cancelled_caught


async def test_a_connection_that_fails_to_be_read_counts_as_a_hang_up_and_raises_nowhere() -> None:
    connection = _Connection()
    connection.says(OSError("connection reset"))
    with anyio.fail_after(5), anyio.CancelScope() as call, HangUpWatch(connection.receive, call, after_seconds=0):
        await anyio.sleep_forever()
    assert call.cancelled_caught


async def test_a_call_answered_while_its_client_waits_is_not_cancelled_and_a_later_hang_up_changes_nothing() -> None:
    connection = _Connection()
    with anyio.CancelScope() as call, HangUpWatch(connection.receive, call, after_seconds=0):
        await connection.read.wait()  # the call's work, long enough for its watch to start reading
    connection.says({"type": "http.disconnect"})
    await anyio.wait_all_tasks_blocked()  # a watch left running would have read it and cancelled the call by now
    assert not call.cancelled_caught
    assert not call.cancel_called


async def test_while_keeping_a_silent_call_alive_the_watch_still_sees_its_client_hang_up() -> None:
    connection = _Connection()
    pings: list[int] = []
    answered = anyio.Event()

    async def keepalive() -> bool:
        pings.append(1)
        if len(pings) == 2:
            answered.set()
            return False  # the answer went: no more comments
        return True

    with (
        anyio.fail_after(5),
        anyio.CancelScope() as call,
        HangUpWatch(connection.receive, call, after_seconds=0, keepalive=keepalive, keepalive_seconds=0.01),
    ):
        await answered.wait()
        connection.says({"type": "http.disconnect"})
        await anyio.sleep_forever()
    assert call.cancelled_caught
    assert len(pings) == 2  # none after the answer went


async def test_a_watch_starts_only_once_its_call_has_run_its_while_whatever_other_calls_did_meanwhile() -> None:
    early, late = _Connection(), _Connection()
    with LoopClock() as clock, anyio.fail_after(7 + 5):  # on the moved clock: 5 s of wall time
        with anyio.CancelScope() as answered_early, HangUpWatch(early.receive, answered_early, after_seconds=5):
            await clock.advance(1)
        with anyio.CancelScope() as call, HangUpWatch(late.receive, call, after_seconds=5):
            await clock.advance(4.5)  # past the first call's start (5 s after it began), which is no longer due
            assert not late.read.is_set()
            await clock.advance(1.5)
            assert late.read.is_set()
    assert not early.read.is_set()  # answered before its watch was due: it never read its connection


async def test_calls_in_flight_share_the_loops_one_timer_and_an_answered_call_leaves_nothing_behind() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines.of(loop)
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled")  # noqa: B009  # asyncio's own timers
    waiting, timers = len(deadlines), sum(not timer.cancelled() for timer in scheduled)
    connections = [_Connection() for _ in range(50)]
    with ExitStack() as calls:
        for connection in connections:
            calls.enter_context(HangUpWatch(connection.receive, anyio.CancelScope(), after_seconds=5))
        assert len(deadlines) == waiting + 50
        assert sum(not timer.cancelled() for timer in scheduled) <= timers + 1  # the loop's one, at most
    assert len(deadlines) == waiting  # answered: none is held until the timer fires
    assert not any(connection.read.is_set() for connection in connections)
