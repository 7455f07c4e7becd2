"""Named sessions (mcpstore_proxy/named.py), driven through the engine in memory with a hand-moved clock:
the reaper closes expired sessions and their upstream sessions, but never one with a call in flight; a client
holds at most `max_named_sessions_per_client`; binding, restarting and closing a named session."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import (
    SESSION_REFUSED,
    SessionLimitError,
    UnknownServiceError,
    UpstreamClosedError,
    UpstreamStartError,
    UpstreamStoppedError,
)
from mcpstore_proxy.keys import SessionKey
from tests.engines import EngineHarness
from tests.engines import running_engine as running_engine_with
from tests.support import fixture_server, wait_until

pytestmark = pytest.mark.anyio

_IDLE_SECONDS = 60.0


def is_reaped(harness: EngineHarness, key: SessionKey, identity: int) -> bool:
    return key not in harness.engine.records and not harness.upstreams.is_alive(identity)


@asynccontextmanager
async def running_engine(tmp_path: Path, servers: dict[str, Any], **settings: Any) -> AsyncGenerator[EngineHarness]:
    """The engine over `servers`, with named sessions idling out after `_IDLE_SECONDS` of the hand-moved clock."""
    settings.setdefault("session_idle_timeout_seconds", _IDLE_SECONDS)
    async with running_engine_with(tmp_path, servers, **settings) as harness:
        yield harness


async def test_the_reaper_closes_a_session_once_idle_past_the_timeout_and_not_before(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        early, late = SessionKey.explicit("early"), SessionKey.explicit("late")
        early_identity = await harness.call(early, "state_whoami")
        harness.clock.advance(30)
        await harness.call(late, "state_remember", value="kept")
        late_identity = await harness.call(late, "state_whoami")

        harness.clock.advance(31)  # early has idled 61 s, late 31 s
        await wait_until(lambda: is_reaped(harness, early, early_identity), timeout=5, what="early to be reaped")
        assert late in harness.engine.records
        assert harness.upstreams.is_alive(late_identity)
        assert await harness.call(late, "state_recall") == ["kept"]

        harness.clock.advance(_IDLE_SECONDS)
        await wait_until(lambda: is_reaped(harness, late, late_identity), timeout=5, what="late to be reaped")
        assert harness.engine.service("", "state").client_sessions == 0


async def test_the_reaper_spares_a_session_with_a_call_in_flight_until_the_call_ends(tmp_path: Path) -> None:
    marker = tmp_path / "sleeping"
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        busy, idle = SessionKey.explicit("busy"), SessionKey.explicit("idle")
        busy_identity = await harness.call(busy, "state_whoami")
        idle_identity = await harness.call(idle, "state_whoami")
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: harness.call(busy, "state_sleep", seconds=60, started_marker=str(marker)))
            await wait_until(marker.exists, timeout=5, what="the busy session's call to start")
            harness.clock.advance(_IDLE_SECONDS + 1)
            # The idle session being reaped shows that the reaper has looked at both.
            await wait_until(lambda: is_reaped(harness, idle, idle_identity), timeout=5, what="idle to be reaped")
            assert busy in harness.engine.records
            assert harness.upstreams.is_alive(busy_identity)
            tg.cancel_scope.cancel()

        record = harness.engine.records.require(busy)
        assert record.calls_in_flight == 0
        assert record.expires_at == harness.clock.now() + _IDLE_SECONDS  # the call's end counts as a use
        harness.clock.advance(_IDLE_SECONDS)
        await wait_until(lambda: is_reaped(harness, busy, busy_identity), timeout=5, what="busy to be reaped")


async def test_an_extended_session_outlives_the_idle_timeout_by_exactly_the_extension(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        task, witness = SessionKey.explicit("task"), SessionKey.explicit("witness")
        identity = await harness.call(task, "state_whoami")
        harness.engine.named.extend(task, 100)
        harness.engine.named.open(witness)
        harness.clock.advance(_IDLE_SECONDS + 1)
        await wait_until(lambda: witness not in harness.engine.records, timeout=5, what="the witness to be reaped")
        assert harness.upstreams.is_alive(identity)
        harness.clock.advance(99)  # 160 s after the last use: idle timeout + 100
        await wait_until(lambda: is_reaped(harness, task, identity), timeout=5, what="the extended session to end")


async def test_a_client_past_its_named_session_limit_is_refused_naming_the_setting(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}, max_named_sessions_per_client=2) as harness:
        named = harness.engine.named
        first, second, third = (SessionKey.explicit(name) for name in ("first", "second", "third"))
        for key in (first, second):
            named.admit(key, "connection alice")
            named.open(key)
        named.admit(first, "connection alice")  # a session it already holds is no new one

        with pytest.raises(SessionLimitError) as refused:
            named.admit(third, "connection alice")
        assert refused.value.code == SESSION_REFUSED
        assert refused.value.http_status == 429
        assert "max_named_sessions_per_client" in refused.value.message
        assert "2 named sessions" in refused.value.message

        named.admit(third, "connection bob")  # another client is unaffected
        named.open(third)


async def test_closing_or_expiring_a_named_session_frees_a_slot_for_its_client(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}, max_named_sessions_per_client=1) as harness:
        named = harness.engine.named
        first, second, third = (SessionKey.explicit(name) for name in ("first", "second", "third"))
        named.admit(first, "connection alice")
        await harness.call(first, "state_whoami")
        with pytest.raises(SessionLimitError):
            named.admit(second, "connection alice")

        await harness.engine.end_session(first)
        named.admit(second, "connection alice")
        identity = await harness.call(second, "state_whoami")
        with pytest.raises(SessionLimitError):
            named.admit(third, "connection alice")

        harness.clock.advance(_IDLE_SECONDS)
        await wait_until(lambda: is_reaped(harness, second, identity), timeout=5, what="the session to expire")
        named.admit(third, "connection alice")


async def test_a_client_that_is_gone_no_longer_counts_its_sessions_which_live_on(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}, max_named_sessions_per_client=1) as harness:
        named = harness.engine.named
        kept, other = SessionKey.explicit("kept"), SessionKey.explicit("other")
        named.admit(kept, "connection alice")
        await harness.call(kept, "state_remember", value="still here")
        named.forget_client("connection alice")
        named.admit(other, "connection alice")
        assert await harness.call(kept, "state_recall") == ["still here"]


async def test_refusals_past_the_limit_are_logged_by_hash_and_throttled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}, max_named_sessions_per_client=1) as harness:
        named = harness.engine.named
        named.admit(SessionKey.explicit("held"), "connection alice")
        named.open(SessionKey.explicit("held"))
        refused = [SessionKey.explicit(f"secret-{n}") for n in range(5)]
        for key in refused:
            with pytest.raises(SessionLimitError):
                named.admit(key, "connection alice")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert lines == [f"refused {refused[0]}: its client already holds 1 named sessions (max_named_sessions_per_client)"]
    assert "secret-" not in caplog.text


async def test_binding_a_service_starts_the_named_sessions_upstream_session_at_once(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        task = SessionKey.explicit("task")
        record = await harness.engine.named.bind(task, "state")
        assert record.bound == ["state"]
        session = harness.engine.service("", "state").session_of(task)
        assert session is not None
        assert session.is_ready
        assert harness.engine.named.connection_status(task) == {"state": "connected"}
        assert len(harness.upstreams.live) == 2  # the catalog session and the bound one
        assert (await harness.engine.named.bind(task, "state")).bound == ["state"]

        with pytest.raises(UnknownServiceError):
            await harness.engine.named.bind(task, "nowhere")


async def test_connection_status_tells_connected_starting_disconnected_and_failed(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    servers = {
        "state": fixture_server("state"),
        "gated": fixture_server("gated", "--start-gate", str(gate)),
        "broken": fixture_server("broken", "--fail-start", "no API key"),
    }
    async with running_engine(tmp_path, servers) as harness:
        named, task = harness.engine.named, SessionKey.explicit("task")
        await named.bind(task, "state")
        with pytest.raises(UpstreamStartError):
            await named.bind(task, "broken")
        (gate / "slow").touch()
        async with anyio.create_task_group() as tg:
            tg.start_soon(named.bind, task, "gated")
            await wait_until(lambda: any(gate.glob("hanging-*")), timeout=5, what="the gated session to hang")
            assert named.connection_status(task) == {"state": "connected", "broken": "failed", "gated": "starting"}
            tg.cancel_scope.cancel()

        with pytest.raises(UpstreamClosedError):
            await harness.call(task, "state_crash")
        await wait_until(
            lambda: named.connection_status(task)["state"] == "disconnected", timeout=5, what="state to disconnect"
        )


async def test_restarting_a_named_session_gives_its_bound_services_fresh_upstream_sessions(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        task = SessionKey.explicit("task")
        await harness.engine.named.bind(task, "state")
        await harness.call(task, "state_remember", value="old")
        before = await harness.call(task, "state_whoami")

        record = await harness.engine.named.restart(task)

        assert record.bound == ["state"]
        assert not harness.upstreams.is_alive(before)
        assert harness.engine.named.connection_status(task) == {"state": "connected"}
        assert await harness.call(task, "state_whoami") != before
        assert await harness.call(task, "state_recall") == []


async def test_closing_a_named_session_fails_its_call_in_flight_and_stops_its_upstream_session(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "sleeping"
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        task = SessionKey.explicit("task")
        identity = await harness.call(task, "state_whoami")
        failures: list[UpstreamStoppedError] = []

        async def sleep() -> None:
            try:
                await harness.call(task, "state_sleep", seconds=60, started_marker=str(marker))
            except UpstreamStoppedError as error:
                failures.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sleep)
            await wait_until(marker.exists, timeout=5, what="the call to start")
            await harness.engine.end_session(task)
            assert not harness.upstreams.is_alive(identity)

        assert len(failures) == 1
        assert failures[0].was_sent
        assert failures[0].upstream == "state"
        assert "its session ended" in failures[0].message


async def test_a_session_closed_with_a_call_in_flight_stays_closed_after_the_call(tmp_path: Path) -> None:
    marker = tmp_path / "sleeping"
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        task = SessionKey.explicit("task")

        async def sleep() -> None:
            with pytest.raises(UpstreamStoppedError):
                await harness.call(task, "state_sleep", seconds=60, started_marker=str(marker))

        async with anyio.create_task_group() as tg:
            tg.start_soon(sleep)
            await wait_until(marker.exists, timeout=5, what="the call to start")
            await harness.engine.end_session(task)

        assert task not in harness.engine.records


async def test_removing_a_service_unbinds_it_from_every_named_session(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        await harness.engine.add_service("", "extra", UpstreamConfig.model_validate(fixture_server("extra")))
        await harness.engine.wait_service("", "extra", 5)
        one, two = SessionKey.explicit("one"), SessionKey.explicit("two", "team_1")
        for key in (one, two):
            await harness.engine.named.bind(key, "state")
            await harness.engine.named.bind(key, "extra")
        await harness.engine.remove_service("", "extra")
        assert harness.engine.records.require(one).bound == ["state"]
        assert harness.engine.records.require(two).bound == ["state"]
        assert harness.engine.named.connection_status(one) == {"state": "connected"}
