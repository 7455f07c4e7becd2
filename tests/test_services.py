"""Upstream services (mcpstore_proxy/services/), through the engine in memory: restart, removal and shutdown are
safe in every state and never take the engine down; requests caught by a restart or a removal get the answer
they should; a shared upstream serves everyone from one session, an isolated one each key from its own."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import anyio
import pytest
from pydantic import BaseModel

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import (
    UPSTREAM_FAILED,
    UpstreamClosedError,
    UpstreamStartError,
    UpstreamStoppedError,
    to_mcp_error,
)
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.services import ServiceState, UpstreamService
from tests.engines import EngineHarness, RecordingClient, running_engine
from tests.support import fixture_server, wait_until

pytestmark = pytest.mark.anyio

_ResultT = TypeVar("_ResultT", bound=BaseModel)
_ALICE = SessionKey.connection("alice")
_BOB = SessionKey.connection("bob")
_BOUND_SECONDS = 10.0
"""What a whole test may take; each takes well under a second or two."""

Mode = Literal["isolated", "shared"]


@dataclass(eq=False)
class Scene(EngineHarness):
    """An engine with a witness upstream ('other', from the config) and a target added at run time whose start
    the test controls: it hangs while `gate/slow` exists, and fails while `ready_flag` does not."""

    gate: Path = Path()
    ready_flag: Path = Path()
    witness: set[int] = field(default_factory=set[int])
    """The instances the witness runs before the target comes."""

    async def add_target(self, mode: Mode = "isolated") -> UpstreamService:
        entry = fixture_server(
            "target", "--start-gate", str(self.gate), "--fail-until", str(self.ready_flag), session=mode
        )
        return await self.engine.add_service("", "target", UpstreamConfig.model_validate(entry))

    async def restart_target(self) -> UpstreamService:
        """Restart the target and wait until its fresh start is ready."""
        await self.engine.restart_service("", "target")
        return await self.engine.wait_service("", "target", 5)

    def let_target_start(self) -> None:
        (self.gate / "slow").unlink(missing_ok=True)
        self.ready_flag.touch()

    def hanging(self) -> set[int]:
        """The instances hanging in their start, now or before."""
        return {int(path.name.removeprefix("hanging-")) for path in self.gate.glob("hanging-*")}

    def target_instances(self) -> set[int]:
        return set(self.upstreams.live) - self.witness

    async def witness_still_serves(self) -> None:
        assert await self.call(SessionKey.explicit("witness"), "other_echo", text="still here") == "still here"


@asynccontextmanager
async def scene(tmp_path: Path) -> AsyncGenerator[Scene]:
    """The engine with the witness ready; leaving it shuts the engine down and checks that nothing outlives it."""
    gate = tmp_path / "gate"
    gate.mkdir()
    with anyio.fail_after(_BOUND_SECONDS):
        async with running_engine(tmp_path, {"other": fixture_server("other")}) as harness:
            witness = set(harness.upstreams.live)
            yield Scene(harness.engine, harness.upstreams, harness.clock, gate, tmp_path / "ready", witness)


async def bring_target_to(scene: Scene, state: str) -> UpstreamService:
    """Add the target and bring it to `state`: starting (hanging in its start), ready (with a client session),
    failed (waiting to retry), or restarting (its shared session lost after it was ready)."""
    if state == "starting":
        (scene.gate / "slow").touch()
        service = await scene.add_target()
        await wait_until(lambda: bool(scene.hanging()), timeout=5, what="the target to hang in its start")
    elif state == "ready":
        scene.ready_flag.touch()
        service = await scene.add_target()
        await scene.engine.wait_service("", "target", 5)
        await scene.call(_ALICE, "target_remember", value="state")
        assert service.client_sessions == 1
    elif state == "failed":
        service = await scene.add_target()
        await wait_until(lambda: service.state is ServiceState.FAILED, timeout=5, what="the target to fail")
    else:
        scene.ready_flag.touch()
        service = await scene.add_target("shared")
        await scene.engine.wait_service("", "target", 5)
        (scene.gate / "slow").touch()  # so that its next start hangs, and it stays restarting
        with pytest.raises(UpstreamClosedError):
            await scene.call(_ALICE, "target_crash")
    await wait_until(lambda: service.state.value == state, timeout=5, what=f"the target to be {state}")
    return service


_STATES = ["starting", "ready", "failed", "restarting"]


@pytest.mark.parametrize("state", _STATES)
async def test_restart_is_safe_in_every_state_and_brings_the_upstream_back_fresh(tmp_path: Path, state: str) -> None:
    async with scene(tmp_path) as it:
        service = await bring_target_to(it, state)
        old = it.target_instances()
        it.let_target_start()

        assert await it.restart_target() is service

        assert await it.call(_ALICE, "target_recall") == []
        await wait_until(lambda: not old & it.upstreams.live, timeout=5, what="the old target instances to stop")
        await it.witness_still_serves()


@pytest.mark.parametrize("state", _STATES)
async def test_removal_is_safe_in_every_state_and_leaves_nothing_of_the_upstream(tmp_path: Path, state: str) -> None:
    async with scene(tmp_path) as it:
        service = await bring_target_to(it, state)

        await it.engine.remove_service("", "target")

        await wait_until(lambda: service.state is ServiceState.STOPPED, timeout=5, what="the target to stop")
        assert [s.name for s in it.engine.services()] == ["other"]
        assert "target_echo" not in {tool.name for tool in it.engine.catalog.tools}
        await wait_until(lambda: not it.target_instances(), timeout=5, what="every target instance to stop")
        await it.witness_still_serves()


@pytest.mark.parametrize("state", _STATES)
async def test_shutdown_is_safe_in_every_state_and_leaves_no_instance(tmp_path: Path, state: str) -> None:
    async with scene(tmp_path) as it:
        service = await bring_target_to(it, state)
        await it.witness_still_serves()
    assert service.state is ServiceState.STOPPED  # and scene() checked that no instance is left


async def test_restart_and_a_second_close_while_a_removal_is_closing_are_safe(tmp_path: Path) -> None:
    async with scene(tmp_path) as it:
        service = await bring_target_to(it, "ready")
        started = len(it.upstreams.started)
        async with anyio.create_task_group() as tg:
            tg.start_soon(it.engine.remove_service, "", "target")
            tg.start_soon(service.restart)  # runs once the removal is closing the target's sessions
            tg.start_soon(service.close, "closed twice")
        await wait_until(lambda: service.state is ServiceState.STOPPED, timeout=5, what="the target to stop")
        await service.restart()  # stopped for good: a restart starts nothing
        assert service.state is ServiceState.STOPPED
        assert len(it.upstreams.started) == started
        await wait_until(lambda: not it.target_instances(), timeout=5, what="every target instance to stop")
        await it.witness_still_serves()


async def test_shutdown_while_a_service_is_closing_leaves_no_instance(tmp_path: Path) -> None:
    closing: list[UpstreamService] = []
    async with anyio.create_task_group() as tg, scene(tmp_path) as it:
        closing.append(await bring_target_to(it, "ready"))
        tg.start_soon(closing[0].close)
        # Leaving shuts the engine down while that close is in progress; scene() checks that nothing is left.
    assert closing[0].state is ServiceState.STOPPED


async def test_two_restarts_in_a_row_while_starting_each_abandon_the_start_before(tmp_path: Path) -> None:
    async with scene(tmp_path) as it:
        await bring_target_to(it, "starting")
        await it.engine.restart_service("", "target")
        await wait_until(lambda: len(it.hanging()) == 2, timeout=5, what="the first restart to hang in its start")
        await it.engine.restart_service("", "target")
        await wait_until(lambda: len(it.hanging()) == 3, timeout=5, what="the second restart to hang in its start")
        first_two = sorted(it.hanging())[:2]
        await wait_until(
            lambda: not set(first_two) & it.upstreams.live, timeout=5, what="the abandoned starts to be stopped"
        )
        await it.witness_still_serves()

        it.let_target_start()
        await it.engine.restart_service("", "target")
        await it.engine.wait_service("", "target", 5)
        assert await it.call(_ALICE, "target_echo", text="back") == "back"


@pytest.mark.parametrize("mode", ["isolated", "shared"])
async def test_a_call_waiting_for_a_session_that_is_restarted_runs_on_the_fresh_one(tmp_path: Path, mode: Mode) -> None:
    async with scene(tmp_path) as it:
        if mode == "shared":
            it.ready_flag.touch()
            await it.add_target("shared")
            await it.engine.wait_service("", "target", 5)
            (it.gate / "slow").touch()
            with pytest.raises(UpstreamClosedError):
                await it.call(_ALICE, "target_crash")
            # Its tools stay listed while it restarts; its next start (after the backoff) hangs.
            await wait_until(lambda: bool(it.hanging()), timeout=5, what="the target's next start to hang")
        else:
            it.ready_flag.touch()
            await it.add_target("isolated")
            await it.engine.wait_service("", "target", 5)
            (it.gate / "slow").touch()  # the call's own session will hang in its start
        answered: list[int] = []
        hung: set[int] = set()
        waiting = anyio.Event()

        async def call() -> None:
            waiting.set()  # nothing in the call yields before it waits for its session
            answered.append(await it.call(_ALICE, "target_whoami"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await waiting.wait()
            await wait_until(lambda: bool(it.hanging()), timeout=5, what="the call's session to hang in its start")
            hung |= it.hanging()
            it.let_target_start()
            await it.engine.restart_service("", "target")

        assert len(answered) == 1
        assert answered[0] not in hung
        assert it.upstreams.is_alive(answered[0])
        assert not hung & it.upstreams.live


@pytest.mark.parametrize("mode", ["isolated", "shared"])
@pytest.mark.parametrize(
    ("operation", "reason"), [("remove", "it was removed"), ("restart", "the upstream was restarted")]
)
async def test_a_call_in_flight_when_the_upstream_is_removed_or_restarted_fails_naming_the_reason(
    tmp_path: Path, mode: Mode, operation: str, reason: str
) -> None:
    marker = tmp_path / "sleeping"
    async with scene(tmp_path) as it:
        it.ready_flag.touch()
        await it.add_target(mode)
        await it.engine.wait_service("", "target", 5)
        failures: list[UpstreamStoppedError] = []

        async def sleep() -> None:
            try:
                await it.call(_ALICE, "target_sleep", seconds=60, started_marker=str(marker))
            except UpstreamStoppedError as error:
                failures.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sleep)
            await wait_until(marker.exists, timeout=5, what="the call to reach the upstream")
            if operation == "remove":
                await it.engine.remove_service("", "target")
            else:
                await it.engine.restart_service("", "target")

        assert len(failures) == 1, "the call may have run, so it must fail rather than run again"
        assert failures[0].was_sent
        assert failures[0].upstream == "target"
        assert "the session with upstream 'target' was closed during tools/call 'sleep'" in failures[0].message
        assert reason in failures[0].message
        assert to_mcp_error(failures[0]).code == UPSTREAM_FAILED
        await it.witness_still_serves()


async def test_a_shared_upstream_serves_every_key_from_its_one_session(tmp_path: Path) -> None:
    async with scene(tmp_path) as it:
        it.ready_flag.touch()
        service = await it.add_target("shared")
        await it.engine.wait_service("", "target", 5)
        (catalog,) = it.target_instances()

        await it.call(_ALICE, "target_remember", value="from alice")
        assert await it.call(_BOB, "target_recall") == ["from alice"]
        assert await it.call(_ALICE, "target_whoami") == catalog
        assert await it.call(SessionKey.ephemeral(), "target_whoami") == catalog
        assert await it.call(SessionKey.explicit("task", "team_1"), "target_whoami") == catalog
        assert service.client_sessions == 0
        assert it.target_instances() == {catalog}


async def test_an_isolated_upstream_serves_each_key_from_its_own_session_apart_from_the_catalog(
    tmp_path: Path,
) -> None:
    async with scene(tmp_path) as it:
        it.ready_flag.touch()
        service = await it.add_target("isolated")
        await it.engine.wait_service("", "target", 5)
        (catalog,) = it.target_instances()

        await it.call(_ALICE, "target_remember", value="from alice")
        assert await it.call(_BOB, "target_recall") == []
        alice, bob = await it.call(_ALICE, "target_whoami"), await it.call(_BOB, "target_whoami")
        assert len({catalog, alice, bob}) == 3
        assert service.client_sessions == 2


async def test_a_shared_upstreams_restart_warns_each_key_once_on_its_next_call(tmp_path: Path) -> None:
    async with scene(tmp_path) as it:
        it.ready_flag.touch()
        await it.add_target("shared")
        await it.engine.wait_service("", "target", 5)
        alice, bob, newcomer = RecordingClient(), RecordingClient(), RecordingClient()
        await it.call(_ALICE, "target_remember", alice, value="gone soon")
        await it.call(_BOB, "target_whoami", bob)

        await it.restart_target()

        for key, client in ((_ALICE, alice), (_BOB, bob)):
            assert await it.call(key, "target_recall", client) == []
            assert await it.call(key, "target_recall", client) == []
            assert len(client.warnings) == 1
            assert "upstream 'target' was restarted" in client.warnings[0]
            assert str(key) in client.warnings[0]
        await it.call(SessionKey.connection("newcomer"), "target_whoami", newcomer)
        await it.call(SessionKey.ephemeral(), "target_whoami", newcomer)
        assert newcomer.warnings == []


async def test_a_shared_upstream_that_crashes_comes_back_by_itself_and_warns_each_key_once(tmp_path: Path) -> None:
    async with scene(tmp_path) as it:
        it.ready_flag.touch()
        service = await it.add_target("shared")
        await it.engine.wait_service("", "target", 5)
        client = RecordingClient()
        lost = await it.call(_ALICE, "target_whoami", client)

        with pytest.raises(UpstreamClosedError) as crashed:
            await it.call(_ALICE, "target_crash", client)
        assert crashed.value.upstream == "target"
        await wait_until(lambda: service.state is ServiceState.RESTARTING, timeout=5, what="the target to restart")
        await it.witness_still_serves()

        # After the first backoff (1 s) it is back, with no one asking.
        await it.engine.wait_service("", "target", 5)
        assert await it.call(_ALICE, "target_whoami", client) != lost
        await it.call(_ALICE, "target_whoami", client)
        assert len(client.warnings) == 1


async def test_wait_service_right_after_a_restart_waits_for_the_fresh_start(tmp_path: Path) -> None:
    async with scene(tmp_path) as it:
        await bring_target_to(it, "ready")
        (it.gate / "slow").touch()  # the fresh start hangs, so the service cannot be ready again
        await it.engine.restart_service("", "target")
        with pytest.raises(UpstreamStartError):
            await it.engine.wait_service("", "target", 0.5)


async def test_restarting_a_failed_upstream_that_can_now_start_makes_it_ready_at_once(tmp_path: Path) -> None:
    async with scene(tmp_path) as it:
        await bring_target_to(it, "failed")
        it.let_target_start()
        await it.engine.restart_service("", "target")
        await it.engine.wait_service("", "target", 5)
