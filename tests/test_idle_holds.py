"""`IdleHolds`: the lane's requests hold a Streamable HTTP session as the SDK's own do (no idle expiry while one is
in flight; expiry once it has been idle for the timeout since the last ended), with one timer per lane rather than
one per request. On real SDK transports, and the event loop's clock moved by hand."""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from mcp.server.streamable_http import StreamableHTTPServerTransport

from mcpstore_proxy.idle_holds import IdleHold, IdleHolds
from tests.clock import LoopClock

pytestmark = pytest.mark.anyio

_TIMEOUT = 600.0


@dataclass
class _Held:
    """A session the lane holds: its transport, the lane's holds, the connection's state, the loop's clock."""

    transport: StreamableHTTPServerTransport
    clock: LoopClock
    holds: IdleHolds = field(default_factory=IdleHolds)
    state: dict[str, Any] = field(default_factory=dict[str, Any])

    @property
    def idle(self) -> anyio.CancelScope:
        assert self.transport.idle_scope is not None
        return self.transport.idle_scope

    def hold(self) -> IdleHold:
        """What the lane enters around each request in the session."""
        return self.holds.of(self.transport, self.state)


@asynccontextmanager
async def _session(timeout: float | None = _TIMEOUT) -> AsyncGenerator[_Held]:
    """A transport as the SDK's manager runs one: its session's task inside the idle scope, counting down from the
    opening request's end; the loop's clock moved by hand."""
    transport = StreamableHTTPServerTransport(mcp_session_id="a" * 32, idle_timeout=timeout)
    async with anyio.create_task_group() as session:
        if timeout is not None:
            idle = transport.idle_scope = anyio.CancelScope(deadline=anyio.current_time() + timeout)

            async def run() -> None:
                with idle:
                    await anyio.sleep_forever()

            session.start_soon(run)
        with LoopClock() as clock:
            yield _Held(transport, clock)
        session.cancel_scope.cancel()


def _pending_timers() -> int:
    scheduled: list[asyncio.TimerHandle] = getattr(asyncio.get_running_loop(), "_scheduled")  # noqa: B009
    return sum(not timer.cancelled() for timer in scheduled)


async def test_a_held_session_does_not_expire_until_the_last_holder_lets_go() -> None:
    async with _session() as held:
        with held.hold() as first:
            assert first is True
            assert held.idle.deadline == math.inf
            with held.hold() as second:
                assert second is True
            await held.clock.advance(_TIMEOUT * 2)
            assert not held.idle.cancel_called  # in flight all along
        await held.clock.advance(_TIMEOUT - 1)
        assert not held.idle.cancel_called
        await held.clock.advance(2)
        assert held.idle.cancel_called  # idle for the timeout since the last request ended


async def test_a_session_used_again_expires_the_timeout_after_its_last_use_not_its_first() -> None:
    async with _session() as held:
        with held.hold():
            pass
        await held.clock.advance(_TIMEOUT / 2)
        with held.hold():
            pass
        await held.clock.advance(_TIMEOUT / 2 + 1)  # past the first use's countdown
        assert not held.idle.cancel_called
        await held.clock.advance(_TIMEOUT / 2)
        assert held.idle.cancel_called


async def test_many_requests_make_no_timer_each_and_queue_the_session_once() -> None:
    async with _session() as held:
        with held.hold():
            pass
        timers = _pending_timers()
        for _ in range(100):
            with held.hold():
                pass
        assert _pending_timers() == timers
        assert len(held.holds) == 1


async def test_a_session_whose_own_request_ended_last_is_left_to_the_sdks_countdown() -> None:
    async with _session() as held:
        with held.hold():
            pass
        await held.clock.advance(10)
        held.idle.deadline = anyio.current_time() + _TIMEOUT  # what the SDK does as its own request ends
        await held.clock.advance(_TIMEOUT - 5)  # past the lane's countdown, not the SDK's
        assert not held.idle.cancel_called
        assert len(held.holds) == 0  # the lane's hold let the session go
        await held.clock.advance(10)
        assert held.idle.cancel_called  # by the SDK's deadline


async def test_a_session_whose_idle_period_ran_out_is_not_held_and_is_left_to_the_sdk() -> None:
    async with _session() as held:
        held.idle.cancel()
        with held.hold() as is_open:
            assert is_open is False
        assert getattr(held.transport, "_requests_in_flight") == 0  # noqa: B009  # counted out as counted in


async def test_a_session_without_an_idle_timeout_is_held_and_never_counted_down() -> None:
    async with _session(timeout=None) as held:
        with held.hold() as is_open:
            assert is_open is True
        assert len(held.holds) == 0


async def test_a_session_gone_before_its_countdown_ends_is_not_kept_alive_by_it() -> None:
    async with _session() as held:
        with held.hold():
            pass
        assert len(held.holds) == 1
        held.state.clear()  # the connection ended: nothing else holds its hold
        gc.collect()
        await held.clock.advance(_TIMEOUT + 1)  # its turn comes: dropped without a look
        assert len(held.holds) == 0
        assert not held.idle.cancel_called  # not looked at: a session gone is the SDK's to end


async def test_a_countdown_that_fails_is_logged_and_the_other_sessions_are_still_counted_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _session() as held, _session() as other:
        other.holds = held.holds  # one lane, two sessions

        class _Failing(IdleHold):
            def expire_due(self, due: float) -> float:
                raise RuntimeError("a bug in a countdown")

        with other.hold():
            pass
        failing = _Failing(held.transport, held.holds, asyncio.get_running_loop())  # kept alive by this name
        held.holds.queue(failing, anyio.current_time() + 1)  # due first
        await held.clock.advance(_TIMEOUT + 1)
        assert other.idle.cancel_called  # counted down all the same
        assert "a session's idle countdown failed" in caplog.text


def test_the_sdk_transport_keeps_its_idle_timeout_and_requests_in_flight_where_the_hold_reads_them() -> None:
    transport = StreamableHTTPServerTransport(mcp_session_id="a" * 32, idle_timeout=5.0)
    assert getattr(transport, "_idle_timeout") == 5.0  # noqa: B009
    assert getattr(transport, "_requests_in_flight") == 0  # noqa: B009
