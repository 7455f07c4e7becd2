"""The engine (mcpstore_proxy/engine.py, with registry.py and views.py) driven directly in memory: start-up
that waits for nobody, `started()` and `startup.settled()`, name collisions, capabilities, services added and removed at
run time, routing each call to its key's session, ending keys, and a shutdown that leaves nothing behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from mcp import types
from pydantic import BaseModel

from mcpstore_proxy.config import UpstreamConfig, load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import (
    ConfigError,
    NameCollisionError,
    UnknownServiceError,
    UnknownToolError,
    UpstreamStartError,
    UpstreamStoppedError,
)
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.services import ServiceState
from tests.clock import ManualClock
from tests.engines import EngineHarness, RecordingClient, running_engine
from tests.memory import MemoryUpstreams
from tests.support import closed_gate, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

_ResultT = TypeVar("_ResultT", bound=BaseModel)
_ALICE = SessionKey.connection("alice")
_BOB = SessionKey.connection("bob")


def hanging(gate: Path) -> set[int]:
    """The instances that hung in their start behind `gate`."""
    return {int(path.name.removeprefix("hanging-")) for path in gate.glob("hanging-*")}


# Start-up.


async def test_entering_the_engine_returns_at_once_while_an_upstream_hangs_in_its_start(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    servers = {"state": fixture_server("state"), "slow": fixture_server("slow", "--start-gate", str(gate))}
    async with running_engine(tmp_path, servers, wait=False) as harness:
        assert harness.engine.startup.is_starting
        assert harness.engine.service("", "slow").state is ServiceState.STARTING
        await wait_until(lambda: bool(hanging(gate)), timeout=5, what="the slow upstream to hang")

        await harness.engine.wait_service("", "state", 5)
        assert await harness.call(_ALICE, "state_echo", text="served") == "served"
        assert harness.engine.service("", "slow").state is ServiceState.STARTING
        assert not any(name.startswith("slow_") for name in harness.tool_names())


async def test_started_waits_for_every_first_attempt_bounded_by_the_start_timeout(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    servers = {
        "good": fixture_server("good"),
        "broken": fixture_server("broken", "--fail-start", "missing API key XYZ"),
        "slow": fixture_server("slow", "--start-gate", str(gate)),
    }
    async with running_engine(tmp_path, servers, wait=False, upstream_start_timeout_seconds=0.5) as harness:
        assert harness.engine.startup.is_starting
        with anyio.fail_after(5):
            await harness.engine.started()

        assert not harness.engine.startup.is_starting
        states = {info.name: (info.state, info.error, info.detail) for info in harness.engine.statuses()}
        assert states["good"] == ("ready", None, None)
        assert states["broken"][0] == "failed"
        assert "upstream 'broken' failed to start" in str(states["broken"][1])
        assert "missing API key XYZ" not in str(states["broken"][1])  # stderr is for operators: the detail
        assert states["broken"][2] == "its stderr said: missing API key XYZ"
        assert states["slow"][0] == "failed"
        assert "upstream 'slow'" in str(states["slow"][1])
        assert "within 0.5 s" in str(states["slow"][1])


async def test_settled_returns_as_soon_as_every_upstream_has_made_its_first_attempt(tmp_path: Path) -> None:
    servers = {"good": fixture_server("good"), "broken": fixture_server("broken", "--fail-start", "no")}
    async with running_engine(tmp_path, servers, wait=False, startup_wait_seconds=60) as harness:
        with anyio.fail_after(5):  # far less than the 60 s window
            await harness.engine.startup.settled()
        assert harness.engine.service("", "good").state is ServiceState.READY
        assert harness.engine.service("", "broken").state is ServiceState.FAILED
        assert "good_echo" in harness.tool_names()


async def test_settled_waits_for_a_hanging_upstream_only_until_the_startup_window_ends(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    servers = {"good": fixture_server("good"), "slow": fixture_server("slow", "--start-gate", str(gate))}
    entered = anyio.current_time()
    async with running_engine(tmp_path, servers, wait=False, startup_wait_seconds=0.5) as harness:
        with anyio.fail_after(5):
            await harness.engine.startup.settled()
        assert anyio.current_time() - entered >= 0.5
        assert harness.engine.service("", "slow").state is ServiceState.STARTING
        with anyio.fail_after(0.5):
            await harness.engine.startup.settled()  # the window is over: nobody waits for the slow upstream again


# Names.


async def test_a_name_collision_between_configured_upstreams_raises_from_started_naming_both(tmp_path: Path) -> None:
    servers = {"one": fixture_server("one", prefix=""), "two": fixture_server("two", prefix="")}
    upstreams = MemoryUpstreams()
    settings = load_settings(write_config(tmp_path, servers))
    with pytest.raises(NameCollisionError) as collision:
        async with ProxyEngine(settings, transports=upstreams, clock=ManualClock()) as engine:
            await engine.started()
    assert "upstream 'one'" in collision.value.message
    assert "upstream 'two'" in collision.value.message
    assert "prefix" in collision.value.message
    assert not upstreams.live


async def test_a_collision_when_an_upstream_comes_up_later_only_warns_and_the_first_owner_keeps_the_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flag = tmp_path / "ready"
    servers = {
        # Listed first, but up only later: the name stays with the upstream that had it.
        "late": fixture_server("late", "--fail-until", str(flag), "--extra-tool", "only_late", prefix=""),
        "early": fixture_server("early", prefix=""),
    }
    async with running_engine(tmp_path, servers) as harness:
        assert harness.engine.tool_route(_ALICE, "echo").upstream == "early"
        flag.touch()
        late = harness.engine.service("", "late")
        await wait_until(lambda: late.state is ServiceState.READY, timeout=5, what="the retry after the backoff")

        assert harness.engine.tool_route(_ALICE, "echo").upstream == "early"
        assert harness.engine.tool_route(_ALICE, "only_late").upstream == "late"
        answer = await harness.engine.call_tool(_ALICE, harness.engine.tool_route(_ALICE, "only_late"), {})
        assert answer["content"] == [{"type": "text", "text": "extra"}]
        assert (
            "tool name 'echo' is exposed by both upstream 'early' (tool 'echo') and upstream 'late' (tool 'echo'); "
            "the later one stays hidden"
        ) in caplog.text


# Capabilities.


async def test_capabilities_advertise_everything_while_starting_then_only_what_upstreams_offer(
    tmp_path: Path,
) -> None:
    gate = closed_gate(tmp_path)
    servers = {"state": fixture_server("state"), "slow": fixture_server("slow", "--start-gate", str(gate))}
    async with running_engine(tmp_path, servers, wait=False) as harness:
        early = harness.engine.capabilities()
        assert early.logging is not None
        assert early.completions is not None
        assert early.prompts is not None
        assert early.resources is not None
        assert early.resources.subscribe

        await wait_until(lambda: bool(hanging(gate)), timeout=5, what="the slow upstream to hang")
        (gate / "slow").unlink()
        await harness.engine.restart_service("", "slow")
        await harness.engine.wait_service("", "slow", 5)

        offered = harness.engine.capabilities()
        assert offered.tools == types.ToolsCapability(list_changed=True)
        assert offered.logging is None  # the fixture servers have no logging
        assert offered.completions is None  # nor completions
        assert offered.prompts == types.PromptsCapability(list_changed=True)
        assert offered.resources == types.ResourcesCapability(subscribe=True, list_changed=True)


# Services at run time.


async def test_a_service_added_at_run_time_joins_the_catalog_and_comes_back_on_the_next_start(tmp_path: Path) -> None:
    extra = UpstreamConfig.model_validate(fixture_server("extra"))
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        service = await harness.engine.add_service("", "extra", extra)
        assert await harness.engine.wait_service("", "extra", 5) is service
        assert await harness.call(_ALICE, "extra_echo", text="added") == "added"
        info = harness.engine.status_of("", service)
        assert (info.state, info.from_config, info.agent_id, info.tool_count) == ("ready", False, None, 13)

    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        await harness.engine.wait_service("", "extra", 5)
        assert await harness.call(_ALICE, "extra_echo", text="restored") == "restored"
        await harness.engine.remove_service("", "extra")

    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        assert [service.name for service in harness.engine.services()] == ["state"]


async def test_adding_a_service_under_a_taken_or_malformed_name_is_refused(tmp_path: Path) -> None:
    extra = UpstreamConfig.model_validate(fixture_server("extra"))
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        with pytest.raises(ConfigError) as taken:
            await harness.engine.add_service("", "state", extra)
        assert "already exists" in taken.value.message
        await harness.engine.add_service("team_1", "private", extra)
        with pytest.raises(ConfigError):
            await harness.engine.add_service("", "private", extra)  # the store's name would reach team_1 too
        with pytest.raises(ConfigError) as malformed:
            await harness.engine.add_service("", "bad name", extra)
        assert "'bad name'" in malformed.value.message
        assert [service.name for service in harness.engine.services()] == ["state"]


async def test_a_configured_service_cannot_be_removed_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        with pytest.raises(ConfigError) as refused:
            await harness.engine.remove_service("", "state")
        assert "config file" in refused.value.message
        with pytest.raises(UnknownServiceError) as unknown:
            await harness.engine.remove_service("", "nowhere")
        assert "'nowhere'" in unknown.value.message
        assert "'state'" in unknown.value.message
        assert await harness.call(_ALICE, "state_echo", text="kept") == "kept"


async def test_removing_a_service_takes_its_tools_away_and_stops_its_sessions(tmp_path: Path) -> None:
    extra = UpstreamConfig.model_validate(fixture_server("extra"))
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        await harness.engine.add_service("", "extra", extra)
        await harness.engine.wait_service("", "extra", 5)
        identity = await harness.call(_ALICE, "extra_whoami")

        await harness.engine.remove_service("", "extra")

        assert not harness.upstreams.is_alive(identity)
        assert not any(name.startswith("extra_") for name in harness.tool_names())
        with pytest.raises(UnknownToolError):
            harness.engine.tool_route(_ALICE, "extra_whoami")
        with pytest.raises(UnknownServiceError):
            await harness.engine.wait_service("", "extra", 1)


async def test_wait_service_raises_the_start_error_of_a_failed_service(tmp_path: Path) -> None:
    servers = {"broken": fixture_server("broken", "--fail-start", "missing API key XYZ")}
    async with running_engine(tmp_path, servers) as harness:
        with pytest.raises(UpstreamStartError) as failed:
            await harness.engine.wait_service("", "broken", 2)
        assert failed.value.upstream == "broken"
        assert "missing API key XYZ" not in failed.value.message  # what goes on the wire
        assert failed.value.detail == "its stderr said: missing API key XYZ"


async def test_wait_service_gives_up_after_its_timeout_naming_the_state(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    servers = {"slow": fixture_server("slow", "--start-gate", str(gate))}
    async with running_engine(tmp_path, servers, wait=False) as harness:
        with anyio.fail_after(5), pytest.raises(UpstreamStartError) as late:
            await harness.engine.wait_service("", "slow", 0.2)
        assert late.value.message == "service 'slow' is not ready after 0.2 s (state: starting)"


async def test_a_service_added_for_an_agent_is_seen_by_that_agent_only(tmp_path: Path) -> None:
    extra = UpstreamConfig.model_validate(fixture_server("private"))
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        await harness.engine.add_service("team_1", "private", extra)
        await harness.engine.wait_service("team_1", "private", 5)
        member, outsider = SessionKey.connection("member", "team_1"), SessionKey.connection("outsider", "team_2")

        assert {"private_echo", "state_echo"} <= harness.tool_names(member)
        assert "private_echo" not in harness.tool_names(outsider)
        assert "private_echo" not in harness.tool_names()
        assert await harness.call(member, "private_echo", text="mine") == "mine"
        with pytest.raises(UnknownServiceError):
            harness.engine.service("team_2", "private")
        assert [info.agent_id for info in harness.engine.statuses()] == [None, "team_1"]


async def test_a_withdrawn_upstream_lets_its_call_in_flight_run_until_the_grace_period_ends_on_the_engines_clock(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "sleeping"
    failures: list[UpstreamStoppedError] = []
    async with running_engine(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=30) as harness:
        withdrawn = harness.engine.service("", "state")

        async def sleep() -> None:
            try:
                await harness.call(_ALICE, "state_sleep", seconds=60, started_marker=str(marker))
            except UpstreamStoppedError as error:
                failures.append(error)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleep)
                await wait_until(marker.exists, timeout=5, what="the call to reach the upstream")
                harness.engine.retire_configured_service("state", "it left the config file")
                await anyio.wait_all_tasks_blocked()
                harness.clock.advance(29)
                await anyio.wait_all_tasks_blocked()
                assert (failures, withdrawn.calls_in_flight) == ([], 1)  # not yet: the grace period is 30 s
                harness.clock.advance(1)

    assert len(failures) == 1
    assert "it left the config file" in failures[0].message


# Requests and keys.


async def test_listing_the_catalog_starts_no_client_session(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        assert "state_remember" in harness.tool_names(_ALICE)
        assert "state_remember" in harness.tool_names(SessionKey.explicit("task"))
        assert len(harness.upstreams.started) == 1  # the catalog session only
        assert harness.engine.service("", "state").client_sessions == 0


async def test_a_tool_call_runs_in_the_session_of_its_key(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        task, team_task = SessionKey.explicit("task"), SessionKey.explicit("task", "team_1")
        await harness.call(_ALICE, "state_remember", value="alice")
        await harness.call(task, "state_remember", value="task")
        await harness.call(team_task, "state_remember", value="team task")

        assert await harness.call(_ALICE, "state_recall") == ["alice"]
        assert await harness.call(SessionKey.explicit("task"), "state_recall") == ["task"]
        assert await harness.call(SessionKey.explicit("task", "team_1"), "state_recall") == ["team task"]
        assert await harness.call(SessionKey.connection("task"), "state_recall") == []
        assert harness.engine.service("", "state").client_sessions == 4


async def test_ending_a_key_closes_its_sessions_with_every_upstream(tmp_path: Path) -> None:
    servers = {"one": fixture_server("one"), "two": fixture_server("two")}
    async with running_engine(tmp_path, servers) as harness:
        mine = {await harness.call(_ALICE, "one_whoami"), await harness.call(_ALICE, "two_whoami")}
        bob = await harness.call(_BOB, "one_whoami")

        await harness.engine.end_session(_ALICE)

        assert not mine & harness.upstreams.live
        assert harness.upstreams.is_alive(bob)
        assert await harness.call(_ALICE, "one_whoami") not in mine
        assert await harness.call(_BOB, "one_whoami") == bob


async def test_a_tool_grown_in_a_keys_own_session_is_listed_for_that_key_only(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        alice = RecordingClient()
        assert await harness.call(_ALICE, "state_grow", alice, name="sprout") == "grew sprout"

        assert "state_sprout" in harness.tool_names(_ALICE)
        assert any(isinstance(notice, types.ToolListChangedNotification) for notice in alice.notices)
        assert "state_sprout" not in harness.tool_names(_BOB)
        assert "state_sprout" not in harness.tool_names()
        sprouted = await harness.engine.call_tool(_ALICE, harness.engine.tool_route(_ALICE, "state_sprout"), {})
        assert sprouted["content"] == [{"type": "text", "text": "I am sprout"}]

        await harness.engine.end_session(_ALICE)
        assert "state_sprout" not in harness.tool_names(_ALICE)


# Catalog changes.


async def test_a_failed_upstream_is_retried_and_listeners_hear_when_its_tools_arrive(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    servers = {"good": fixture_server("good"), "late": fixture_server("late", "--fail-until", str(flag))}
    async with running_engine(tmp_path, servers) as harness:
        heard: list[set[str]] = []

        async def listener() -> None:
            heard.append(harness.tool_names())

        harness.engine.add_listener(listener)
        assert harness.engine.service("", "late").state is ServiceState.FAILED
        flag.touch()

        await wait_until(lambda: any("late_echo" in names for names in heard), timeout=5, what="a catalog change")
        assert await harness.call(_ALICE, "late_echo", text="finally") == "finally"


async def test_a_failing_listener_is_logged_and_the_others_still_hear_of_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        heard: list[str] = []

        async def failing() -> None:
            raise RuntimeError("listener fault")

        async def recording() -> None:
            heard.append("changed")

        harness.engine.add_listener(failing)
        harness.engine.add_listener(recording)
        await harness.engine.add_service("", "extra", UpstreamConfig.model_validate(fixture_server("extra")))
        await wait_until(lambda: bool(heard), timeout=5, what="the recording listener to hear of the new tools")
        await wait_until(lambda: "a catalog-change listener failed" in caplog.text, timeout=5, what="the fault")
        assert await harness.call(_ALICE, "extra_echo", text="serving") == "serving"


# Shutdown.


async def test_shutdown_stops_every_instance_whatever_state_its_upstream_is_in(tmp_path: Path) -> None:
    start_gate, session_gate = closed_gate(tmp_path), tmp_path / "session-gate"
    session_gate.mkdir()
    servers = {
        "state": fixture_server("state"),
        "common": fixture_server("common", session="shared"),
        "broken": fixture_server("broken", "--fail-start", "no"),
        "slow": fixture_server("slow", "--start-gate", str(start_gate)),
        "gated": fixture_server("gated", "--start-gate", str(session_gate)),
    }
    marker = tmp_path / "sleeping"
    failures: dict[str, UpstreamStoppedError] = {}

    async def call(harness: EngineHarness, name: str, key: SessionKey, tool: str, arguments: dict[str, Any]) -> None:
        try:
            await harness.call(key, tool, **arguments)
        except UpstreamStoppedError as error:
            failures[name] = error

    with anyio.fail_after(10):
        async with (
            anyio.create_task_group() as tg,
            running_engine(tmp_path, servers, wait=False) as harness,
        ):
            for name in ("state", "common", "gated"):
                await harness.engine.wait_service("", name, 5)
            await harness.call(_BOB, "state_whoami")
            await harness.call(_BOB, "common_whoami")
            await wait_until(lambda: bool(hanging(start_gate)), timeout=5, what="the slow upstream to hang")
            sleep = {"seconds": 60, "started_marker": str(marker)}
            tg.start_soon(call, harness, "in flight", _ALICE, "state_sleep", sleep)
            (session_gate / "slow").touch()
            tg.start_soon(call, harness, "waiting", _ALICE, "gated_whoami", dict[str, Any]())
            await wait_until(marker.exists, timeout=5, what="the call to reach its upstream")
            await wait_until(lambda: bool(hanging(session_gate)), timeout=5, what="a session to hang in start")
            assert harness.engine.service("", "broken").state is ServiceState.FAILED
            assert harness.engine.service("", "slow").state is ServiceState.STARTING
        # running_engine has checked that no upstream instance outlived the engine

    assert failures["in flight"].was_sent
    assert "shutting down" in failures["in flight"].message
    assert not failures["waiting"].was_sent
    assert "shutting down" in failures["waiting"].message
