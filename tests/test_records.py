"""Named-session records (mcpstore_proxy/records.py): each use keeps a session alive for the idle timeout,
`extend` moves the expiry by exactly the seconds given, and a session with a call in flight never expires.
Time is a `ManualClock`, so no test waits for a timeout."""

from __future__ import annotations

import math

import pytest

from mcpstore_proxy.errors import SESSION_REFUSED, ConfigError, SessionClosedError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.records import SessionRecords
from tests.clock import ManualClock

pytestmark = pytest.mark.anyio

_IDLE_SECONDS = 100.0
_TASK = SessionKey.explicit("task")


def records_with_clock() -> tuple[SessionRecords, ManualClock]:
    clock = ManualClock()
    return SessionRecords(_IDLE_SECONDS, clock), clock


async def test_a_new_record_is_used_now_and_expires_one_idle_timeout_later() -> None:
    records, clock = records_with_clock()
    record = records.open(_TASK)
    assert record.created_at == record.last_active == clock.now()
    assert record.expires_at == clock.now() + _IDLE_SECONDS
    assert records.expires_in_seconds(record) == _IDLE_SECONDS
    assert records.open(_TASK) is record
    assert _TASK in records


async def test_touch_keeps_a_session_alive_for_the_idle_timeout_from_its_last_use() -> None:
    records, clock = records_with_clock()
    records.open(_TASK)
    clock.advance(60)
    record = records.touch(_TASK)
    assert record.last_active == clock.now()
    assert record.expires_at == clock.now() + _IDLE_SECONDS
    clock.advance(_IDLE_SECONDS - 1)
    assert records.expired() == []
    clock.advance(1)
    assert records.expired() == [_TASK]


async def test_touch_never_shortens_an_extended_expiry() -> None:
    records, clock = records_with_clock()
    extended = records.extend(_TASK, 1000).expires_at
    clock.advance(10)
    assert records.touch(_TASK).expires_at == extended


@pytest.mark.parametrize("seconds", [600.0, 0.25])
async def test_extend_moves_the_expiry_by_exactly_the_seconds(seconds: float) -> None:
    records, clock = records_with_clock()
    records.open(_TASK)
    clock.advance(40)
    before = records.touch(_TASK).expires_at
    assert records.extend(_TASK, seconds).expires_at == before + seconds
    assert records.extend(_TASK, seconds).expires_at == before + 2 * seconds


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf])
async def test_extend_by_a_number_that_is_not_finite_is_refused_and_changes_nothing(seconds: float) -> None:
    records, _ = records_with_clock()
    before = records.open(_TASK).expires_at
    with pytest.raises(ConfigError) as refused:
        records.extend(_TASK, seconds)
    assert repr(seconds) in refused.value.message
    assert refused.value.http_status == 400
    assert records.require(_TASK).expires_at == before


async def test_expired_lists_sessions_whose_expiry_has_passed_but_not_those_with_calls_in_flight() -> None:
    records, clock = records_with_clock()
    idle, busy, fresh = SessionKey.explicit("idle"), SessionKey.explicit("busy"), SessionKey.explicit("fresh")
    records.open(idle)
    records.open(busy).calls_in_flight = 1
    clock.advance(_IDLE_SECONDS)
    records.open(fresh)
    assert records.expired() == [idle]
    records.require(busy).calls_in_flight = 0
    assert set(records.expired()) == {idle, busy}


async def test_a_session_of_another_agent_is_a_record_of_its_own() -> None:
    records, _ = records_with_clock()
    mine = records.open(SessionKey.explicit("task", "team_1"))
    records.extend(SessionKey.explicit("task", "team_2"), 50)
    assert records.open(SessionKey.explicit("task", "team_1")) is mine
    assert len(list(records)) == 2
    assert _TASK not in records


async def test_require_of_a_closed_or_unknown_session_raises_session_closed_naming_it() -> None:
    records, _ = records_with_clock()
    records.open(_TASK)
    records.remove(_TASK)
    with pytest.raises(SessionClosedError) as closed:
        records.require(_TASK)
    assert closed.value.code == SESSION_REFUSED
    assert closed.value.http_status == 404
    assert "'task'" in closed.value.message
    with pytest.raises(SessionClosedError) as of_agent:
        records.require(SessionKey.explicit("task", "team_1"))
    assert "agent 'team_1'" in of_agent.value.message


async def test_a_removed_session_no_longer_expires_or_lists() -> None:
    records, clock = records_with_clock()
    records.open(_TASK)
    assert records.remove(_TASK) is not None
    assert records.remove(_TASK) is None
    clock.advance(2 * _IDLE_SECONDS)
    assert records.expired() == []
    assert records.keys() == set()
