"""The per-key sessions of an isolated upstream (mcpstore_proxy/pool.py), through the engine in memory: one
session per key, reused; a cap that refuses at once; a lost session replaced on the next call with a warning;
ephemeral keys that end with their call."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import BaseModel

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import (
    SESSION_REFUSED,
    UPSTREAM_FAILED,
    SessionLimitError,
    UpstreamClosedError,
    UpstreamStoppedError,
)
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.services import IsolatedService
from tests.engines import EngineHarness, RecordingClient, running_engine
from tests.support import fixture_server, wait_until

pytestmark = pytest.mark.anyio

_ResultT = TypeVar("_ResultT", bound=BaseModel)
_ALICE = SessionKey.connection("alice")
_BOB = SessionKey.connection("bob")


async def test_each_key_gets_a_session_of_its_own_reused_for_every_later_call(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        await harness.call(_ALICE, "state_remember", value="alice-1")
        await harness.call(_BOB, "state_remember", value="bob-1")
        await harness.call(_ALICE, "state_remember", value="alice-2")

        assert await harness.call(_ALICE, "state_recall") == ["alice-1", "alice-2"]
        assert await harness.call(_BOB, "state_recall") == ["bob-1"]
        alice = await harness.call(_ALICE, "state_whoami")
        assert alice != await harness.call(_BOB, "state_whoami")
        assert await harness.call(_ALICE, "state_whoami") == alice
        assert state_service(harness).client_sessions == 2
        assert len(harness.upstreams.started) == 3  # the catalog session, and one session per key


async def test_a_new_session_past_the_cap_is_refused_at_once_naming_the_upstream_and_the_cap(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}, max_sessions_per_upstream=2) as harness:
        alice = await harness.call(_ALICE, "state_whoami")
        bob = await harness.call(_BOB, "state_whoami")
        carol = SessionKey.explicit("carol")
        started = len(harness.upstreams.started)

        with pytest.raises(SessionLimitError) as refused:
            await harness.call(carol, "state_whoami")

        assert refused.value.code == SESSION_REFUSED
        assert refused.value.http_status == 429
        assert "upstream 'state' already has 2 sessions, its cap" in refused.value.message
        assert "max_sessions_per_upstream" in refused.value.message
        assert "mcpServers.state.max_sessions" in refused.value.message
        assert len(harness.upstreams.started) == started  # nothing was spawned for the refused key
        assert await harness.call(_ALICE, "state_whoami") == alice
        assert await harness.call(_BOB, "state_whoami") == bob

        await harness.engine.end_session(_ALICE)
        assert await harness.call(carol, "state_whoami") not in (alice, bob)


async def test_an_upstreams_own_max_sessions_overrides_the_global_cap(tmp_path: Path) -> None:
    servers = {"tight": fixture_server("tight", max_sessions=1), "roomy": fixture_server("roomy")}
    async with running_engine(tmp_path, servers, max_sessions_per_upstream=5) as harness:
        await harness.call(_ALICE, "tight_whoami")
        with pytest.raises(SessionLimitError) as refused:
            await harness.call(_BOB, "tight_whoami")
        assert "upstream 'tight' already has 1 sessions" in refused.value.message
        await harness.call(_ALICE, "roomy_whoami")
        await harness.call(_BOB, "roomy_whoami")


async def test_sessions_still_starting_count_against_the_cap_and_show_in_the_pools_summary(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    async with running_engine(
        tmp_path, {"state": fixture_server("state", "--start-gate", str(gate))}, max_sessions_per_upstream=2
    ) as harness:
        await harness.call(_ALICE, "state_whoami")
        (gate / "slow").touch()
        state_service(harness).pool.open(_BOB)  # its start hangs
        await wait_until(lambda: any(gate.glob("hanging-*")), timeout=5, what="bob's session to hang in its start")

        assert repr(state_service(harness).pool) == "<SessionPool state: 2 sessions (1 starting), cap 2>"
        with pytest.raises(SessionLimitError):
            await harness.call(SessionKey.explicit("carol"), "state_whoami")


async def test_a_lost_session_is_replaced_on_the_next_call_which_carries_one_reset_warning(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        alice, bob = RecordingClient(), RecordingClient()
        await harness.call(_ALICE, "state_remember", alice, value="lost soon")
        lost = await harness.call(_ALICE, "state_whoami", alice)
        bob_identity = await harness.call(_BOB, "state_whoami", bob)

        with pytest.raises(UpstreamClosedError) as crashed:
            await harness.call(_ALICE, "state_crash", alice)
        assert crashed.value.code == UPSTREAM_FAILED
        assert crashed.value.upstream == "state"
        assert alice.warnings == []

        assert await harness.call(_ALICE, "state_recall", alice) == []
        assert await harness.call(_ALICE, "state_whoami", alice) != lost
        assert not harness.upstreams.is_alive(lost)
        assert len(alice.warnings) == 1
        assert "upstream 'state' was restarted" in alice.warnings[0]
        assert "reset" in alice.warnings[0]
        await harness.call(_ALICE, "state_remember", alice, value="kept again")
        assert await harness.call(_ALICE, "state_recall", alice) == ["kept again"]
        assert len(alice.warnings) == 1

        assert await harness.call(_BOB, "state_whoami", bob) == bob_identity
        assert bob.warnings == []


async def test_a_key_that_ended_its_own_session_starts_afresh_without_a_warning(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        client = RecordingClient()
        await harness.call(_ALICE, "state_remember", client, value="old")
        before = await harness.call(_ALICE, "state_whoami", client)

        await harness.engine.end_session(_ALICE)

        assert not harness.upstreams.is_alive(before)  # ending waits until the upstream is gone
        assert state_service(harness).client_sessions == 0
        assert await harness.call(_ALICE, "state_recall", client) == []
        assert client.warnings == []


async def test_an_ephemeral_key_ends_its_session_right_after_its_call(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        first = await harness.call(SessionKey.ephemeral(), "state_whoami")
        await wait_until(lambda: not harness.upstreams.is_alive(first), timeout=5, what="the ephemeral session to end")
        assert state_service(harness).client_sessions == 0

        second = await harness.call(SessionKey.ephemeral(), "state_whoami")
        assert second != first
        await wait_until(lambda: not harness.upstreams.is_alive(second), timeout=5, what="the second to end")


async def test_a_closed_pool_takes_no_new_sessions_and_says_why(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        await harness.engine.add_service("", "extra", UpstreamConfig.model_validate(fixture_server("extra")))
        service = await harness.engine.wait_service("", "extra", 5)
        assert isinstance(service, IsolatedService)
        identity = await harness.call(_ALICE, "extra_whoami")

        await harness.engine.remove_service("", "extra")

        assert not harness.upstreams.is_alive(identity)
        with pytest.raises(UpstreamStoppedError) as refused:
            service.pool.open(_BOB)
        assert not refused.value.was_sent
        assert "upstream 'extra' takes no new sessions" in refused.value.message
        assert "removed" in refused.value.message
        assert len(service.pool) == 0


def state_service(harness: EngineHarness) -> IsolatedService:
    service = harness.engine.service("", "state")
    assert isinstance(service, IsolatedService)
    return service


async def test_sessions_an_upstream_answered_alike_share_one_copy_of_its_initialize_answer(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        await harness.call(_ALICE, "state_remember", value="alice-1")
        await harness.call(_BOB, "state_remember", value="bob-1")
        sessions = state_service(harness).pool.sessions

        alice, bob = await sessions[_ALICE].client(), await sessions[_BOB].client()

        assert alice is not bob
        assert alice.initialize_result is not None
        assert alice.initialize_result is bob.initialize_result
        assert sessions[_ALICE].server_capabilities is sessions[_BOB].server_capabilities
        assert await harness.call(_ALICE, "state_recall") == ["alice-1"]  # each session still its own
        assert await harness.call(_BOB, "state_recall") == ["bob-1"]
