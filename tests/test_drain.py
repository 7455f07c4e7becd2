"""`Drain`, shutting down without dropping anyone: requests in flight finish, new ones are refused with a
clear error, and whatever outlives the grace period is cancelled with an error saying so; `hurry()` ends
the grace at once. Then the same through the proxy served in process, stopped as SIGTERM would stop it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError

from mcpstore_proxy.drain import Drain
from mcpstore_proxy.errors import SHUTTING_DOWN, ShuttingDownError
from mcpstore_proxy.task_scope import TaskCancelScope
from tests.held_call import HeldCall
from tests.inprocess import running_app
from tests.support import ACCEPT, INITIALIZE, connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

InFlight = Callable[[Drain], AbstractContextManager[anyio.CancelScope | TaskCancelScope]]


@pytest.fixture(params=["anyio scope", "task scope"])
def in_flight(request: pytest.FixtureRequest) -> InFlight:
    """A request in flight as the SDK's handlers hold one (an anyio scope), or as the fast lane does (its task's)."""
    if request.param == "anyio scope":
        return Drain.request

    def in_its_task(drain: Drain) -> AbstractContextManager[TaskCancelScope]:
        task = asyncio.current_task()
        assert task is not None
        return drain.request_in(task)

    return in_its_task


async def test_drain_returns_once_the_requests_in_flight_have_finished(in_flight: InFlight) -> None:
    drain = Drain()
    journal: list[str] = []
    release = anyio.Event()

    async def request() -> None:
        with in_flight(drain):
            await release.wait()
        journal.append("request finished")

    async def draining() -> None:
        await drain.drain(grace_seconds=60)
        journal.append("drained")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            await wait_until(lambda: drain.in_flight == 1, what="the request to be in flight")
            tg.start_soon(draining)
            await anyio.wait_all_tasks_blocked()
            assert drain.is_draining
            assert journal == []  # the drain waits for the request
            release.set()
    assert journal == ["request finished", "drained"]
    assert drain.in_flight == 0


async def test_a_drain_with_nothing_in_flight_returns_at_once() -> None:
    drain = Drain()
    with anyio.fail_after(1):  # far below the grace period
        await drain.drain(grace_seconds=300)
    assert drain.is_draining
    assert repr(drain) == "<Drain draining, 0 requests in flight>"


async def test_a_request_arriving_while_draining_is_refused(
    caplog: pytest.LogCaptureFixture, in_flight: InFlight
) -> None:
    drain = Drain()
    assert repr(drain) == "<Drain open, 0 requests in flight>"
    drain.refuse_if_draining()  # open: nothing happens
    await drain.drain(grace_seconds=1)
    ran = False
    for _ in range(3):
        with pytest.raises(ShuttingDownError) as refused, in_flight(drain):
            ran = True
        assert refused.value.code == SHUTTING_DOWN
        assert refused.value.http_status == 503
        assert "shutting down and takes no new requests" in refused.value.message
    with pytest.raises(ShuttingDownError):
        drain.refuse_if_draining()
    assert not ran
    # A flood of refusals is one log line (the rest are counted, not logged).
    refusals = [r for r in caplog.records if "refused a request" in r.getMessage()]
    assert len(refusals) == 1


async def test_when_the_grace_period_ends_the_requests_left_are_cancelled_with_an_error_saying_so(
    caplog: pytest.LogCaptureFixture, in_flight: InFlight
) -> None:
    drain = Drain()
    failures: list[ShuttingDownError] = []
    started = anyio.Event()

    async def endless() -> None:
        try:
            with in_flight(drain):
                started.set()
                await anyio.sleep_forever()
        except ShuttingDownError as error:
            failures.append(error)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(endless)
            await started.wait()
            await drain.drain(grace_seconds=0.05)
            # drain() returns only once the cancelled request has answered.
            assert len(failures) == 1
    assert failures[0].code == SHUTTING_DOWN
    assert "grace period ran out" in failures[0].message
    assert "cancelled upstream" in failures[0].message
    assert "cancelling 1 requests still in flight" in caplog.text


async def test_a_request_its_own_caller_cancels_just_ends_and_is_no_longer_in_flight(in_flight: InFlight) -> None:
    drain = Drain()
    with anyio.fail_after(5), in_flight(drain) as scope:
        assert drain.in_flight == 1
        scope.cancel()  # as the fast lane does for a client's notifications/cancelled
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert drain.in_flight == 0
    with anyio.fail_after(1):
        await drain.drain(grace_seconds=60)  # nothing left to wait for


async def test_a_request_that_finishes_within_the_grace_period_is_not_cut(in_flight: InFlight) -> None:
    drain = Drain()
    outcome: list[str] = []
    release = anyio.Event()

    async def request() -> None:
        with in_flight(drain):
            await release.wait()
            outcome.append("answered")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            await wait_until(lambda: drain.in_flight == 1, what="the request to be in flight")
            tg.start_soon(drain.drain, 60)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert outcome == ["answered"]


async def test_hurry_ends_the_grace_period_at_once(in_flight: InFlight) -> None:
    drain = Drain()
    failures: list[ShuttingDownError] = []
    started = anyio.Event()

    async def endless() -> None:
        try:
            with in_flight(drain):
                started.set()
                await anyio.sleep_forever()
        except ShuttingDownError as error:
            failures.append(error)

    with anyio.fail_after(5):  # far below the grace period
        async with anyio.create_task_group() as tg:
            tg.start_soon(endless)
            await started.wait()
            tg.start_soon(drain.drain, 300)
            await anyio.wait_all_tasks_blocked()
            assert failures == []
            drain.hurry()
    assert len(failures) == 1
    assert "grace period ran out" in failures[0].message


# Through the proxy, stopped the way SIGTERM stops it.


async def test_during_the_drain_a_call_in_flight_completes_and_newcomers_get_503_with_a_json_rpc_error(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=60)
    held = HeldCall()  # the call stays in flight until the test releases it
    newcomer: httpx2.Response | None = None
    health: dict[str, Any] = {}
    too_late: pytest.ExceptionInfo[MCPError] | None = None
    async with running_app(config) as proxy, connect(proxy.url, sampling_callback=held.answer_once_released) as client:
        async with held.in_flight(client, "state_ask"):
            await proxy.start_draining()
            async with httpx2.AsyncClient() as http:
                newcomer = await http.post(proxy.url, json=INITIALIZE, headers=ACCEPT)
                health = (await http.get(proxy.url.replace("/mcp", "/healthz"))).json()
            with pytest.raises(MCPError) as refused:  # a new request in an open session
                await client.call_tool("state_echo", {"text": "too late"})
            too_late = refused
            held.release()
        assert held.answers == ["answered"]
    assert too_late is not None
    assert too_late.value.code == SHUTTING_DOWN
    assert "shutting down and takes no new requests" in too_late.value.message
    assert newcomer is not None
    assert newcomer.status_code == 503
    error = newcomer.json()["error"]
    assert error["code"] == SHUTTING_DOWN
    assert error["data"] == {"type": "ShuttingDownError"}
    assert "shutting down and takes no new sessions" in error["message"]
    assert health["status"] == "draining"
