"""`Control`, the operations behind the SDK and the admin API, over an engine in memory: services added,
listed, waited for, restarted and removed; tool names resolved; named sessions opened, bound, extended,
restarted, refreshed and closed, with what `session_info` reports.

The upstreams are the fixture server run in memory (`MemoryUpstreams`), one instance per upstream session,
and the engine's wall clock moves only by hand (`ManualClock`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from mcpstore_proxy.config import load_settings
from mcpstore_proxy.control import Control
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import (
    AmbiguousToolError,
    ConfigError,
    InvalidSessionKeyError,
    SessionClosedError,
    UnknownServiceError,
    UnknownToolError,
    UpstreamStartError,
)
from mcpstore_proxy.registry import ServicePolicy
from tests.clock import ManualClock
from tests.conversation import structured, text_of
from tests.memory import MemoryUpstreams
from tests.support import closed_gate, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

IDLE_SECONDS: Final = 600.0
STORE: Final = ""


@dataclass(eq=False)
class Harness:
    control: Control
    upstreams: MemoryUpstreams
    clock: ManualClock

    async def call(self, session: str | None, tool: str, arguments: dict[str, Any] | None = None, **kw: Any) -> Any:
        return structured(await self.control.call_tool(STORE, session, tool, arguments, **kw))

    async def identity(self, session: str | None, tool: str = "state_whoami") -> int:
        return int(await self.call(session, tool))


@asynccontextmanager
async def control_over(
    tmp_path: Path, servers: dict[str, Any], *, allows_stdio: bool = True, **settings: Any
) -> AsyncGenerator[Harness]:
    """`Control` over a started engine serving `servers`; leaving checks that no upstream instance is left."""
    upstreams = MemoryUpstreams()
    clock = ManualClock()
    settings.setdefault("session_idle_timeout_seconds", IDLE_SECONDS)
    config = write_config(tmp_path, servers, **settings)
    async with ProxyEngine(load_settings(config), transports=upstreams, clock=clock) as engine:
        await engine.started()
        yield Harness(Control(engine, policy=ServicePolicy(allows_stdio=allows_stdio)), upstreams, clock)
    assert not upstreams.live, f"upstream instances {sorted(upstreams.live)} outlived the engine"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncGenerator[Harness]:
    async with control_over(tmp_path, {"state": fixture_server("state")}) as opened:
        yield opened


# Services.


async def test_add_services_takes_one_entry_with_a_name(harness: Harness) -> None:
    control = harness.control
    [added] = await control.add_services(STORE, {"name": "extra", **fixture_server("extra")})
    assert (added.name, added.agent_id, added.transport, added.from_config) == ("extra", None, "stdio", False)
    ready = await control.wait_service(STORE, "extra", 10)
    assert ready.state == "ready"
    assert ready.tool_count == (await control.service_status(STORE, "state")).tool_count
    assert "extra_echo" in [tool.name for tool in await control.list_tools(STORE)]


async def test_add_services_takes_an_mcp_servers_payload(harness: Harness) -> None:
    control = harness.control
    payload = {"mcpServers": {"one": fixture_server("one"), "two": fixture_server("two", session="shared")}}
    added = await control.add_services(STORE, payload)
    assert [(service.name, service.session_mode) for service in added] == [("one", "isolated"), ("two", "shared")]
    assert [service.name for service in await control.list_services(STORE)] == ["state", "one", "two"]
    for name in ("one", "two"):
        assert (await control.wait_service(STORE, name, 10)).state == "ready"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "bad", "command": "x", "call_timeout_seconds": 0}, "service 'bad': call_timeout_seconds"),
        ({"name": "bad", "command": "x", "colour": "red"}, "service 'bad': has unknown option(s) 'colour'"),
        ({"name": "bad", "args": ["x"]}, "service 'bad': needs either 'command'"),
        ({"name": "bad", "url": "ftp://example.com"}, "service 'bad': url 'ftp://example.com' must start with"),
        ({"command": "x"}, "a service needs a 'name'"),
        ({"name": "bad name!", "command": "x"}, "service name 'bad name!' may use only"),
    ],
)
async def test_a_bad_entry_is_refused_naming_the_service_and_the_field(
    harness: Harness, entry: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        await harness.control.add_services(STORE, entry)
    assert refused.value.message.startswith(expected), refused.value.message
    assert [service.name for service in await harness.control.list_services(STORE)] == ["state"]


async def test_one_bad_entry_in_a_payload_adds_none_of_them(harness: Harness) -> None:
    payload = {"mcpServers": {"good": fixture_server("good"), "bad": {"command": "x", "colour": "red"}}}
    with pytest.raises(ConfigError, match="service 'bad'"):
        await harness.control.add_services(STORE, payload)
    assert [service.name for service in await harness.control.list_services(STORE)] == ["state"]


async def test_a_command_service_is_refused_unless_the_caller_may_spawn_one(tmp_path: Path) -> None:
    async with control_over(tmp_path, {"state": fixture_server("state")}, allows_stdio=False) as harness:
        started = len(harness.upstreams.started)
        with pytest.raises(ConfigError) as refused:
            await harness.control.add_services(STORE, {"name": "spawned", **fixture_server("spawned")})
        assert "service 'spawned' runs a command" in refused.value.message
        assert "allow_stdio_services_via_api: true" in refused.value.message
        assert [service.name for service in await harness.control.list_services(STORE)] == ["state"]
        assert len(harness.upstreams.started) == started  # nothing was spawned


async def test_a_name_already_taken_by_a_different_entry_is_refused(harness: Harness) -> None:
    with pytest.raises(ConfigError, match="a service named 'state' already exists in the config file with a different"):
        await harness.control.add_services(STORE, {"name": "state", **fixture_server("other")})


async def test_remove_service_stops_its_sessions_and_forgets_it(harness: Harness) -> None:
    control = harness.control
    await control.add_services(STORE, {"name": "extra", **fixture_server("extra")})
    await control.wait_service(STORE, "extra", 10)
    await control.open_session(STORE, "task")
    await control.bind_service(STORE, "task", "extra")
    identity = await harness.identity("task", "extra_whoami")
    await control.remove_service(STORE, "extra")
    assert not harness.upstreams.is_alive(identity)
    with pytest.raises(UnknownServiceError, match="no service named 'extra' here"):
        await control.service_status(STORE, "extra")
    assert not any(tool.service == "extra" for tool in await control.list_tools(STORE))
    assert (await control.session_info(STORE, "task")).bound_services == []


async def test_a_service_from_the_config_file_cannot_be_removed_and_an_unknown_one_is_unknown(
    harness: Harness,
) -> None:
    with pytest.raises(ConfigError, match="comes from the config file"):
        await harness.control.remove_service(STORE, "state")
    with pytest.raises(UnknownServiceError):
        await harness.control.remove_service(STORE, "nothing")
    assert (await harness.control.service_status(STORE, "state")).state == "ready"


async def test_restart_service_starts_a_shared_upstream_afresh(tmp_path: Path) -> None:
    async with control_over(tmp_path, {"state": fixture_server("state", session="shared")}) as harness:
        before = await harness.identity(None)
        await harness.control.restart_service(STORE, "state")
        assert (await harness.control.wait_service(STORE, "state", 10)).state == "ready"
        after = await harness.identity(None)
        assert after != before
        assert not harness.upstreams.is_alive(before)


async def test_restart_service_closes_the_sessions_clients_hold_with_it(harness: Harness) -> None:
    await harness.call("task", "state_remember", {"value": "kept"}, opens=True)
    before = await harness.identity("task")
    await harness.control.restart_service(STORE, "state")
    await harness.control.wait_service(STORE, "state", 10)
    assert not harness.upstreams.is_alive(before)
    assert await harness.call("task", "state_recall") == []


async def test_wait_service_raises_the_start_error_of_a_service_that_fails(tmp_path: Path) -> None:
    servers = {"state": fixture_server("state"), "broken": fixture_server("broken", "--fail-start", "no luck")}
    async with control_over(tmp_path, servers) as harness:
        with pytest.raises(UpstreamStartError) as failed:
            await harness.control.wait_service(STORE, "broken", 3)
        assert failed.value.upstream == "broken"
        assert "no luck" in str(failed.value)  # the stderr is detail: the operator's own process sees it
        status = await harness.control.service_status(STORE, "broken")
        assert status.state == "failed"
        assert status.error is not None
        assert status.detail == "its stderr said: no luck"  # the embedded SDK is the operator: it sees the detail


async def test_wait_service_gives_up_after_its_timeout_naming_the_state(harness: Harness, tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    await harness.control.add_services(STORE, {"name": "slow", **fixture_server("slow", "--start-gate", str(gate))})
    with pytest.raises(UpstreamStartError, match=r"service 'slow' is not ready after 0.1 s \(state: starting\)"):
        await harness.control.wait_service(STORE, "slow", 0.1)


async def test_services_added_for_an_agent_are_that_agents_own(harness: Harness) -> None:
    control = harness.control
    [added] = await control.add_services("team_1", {"name": "mine", **fixture_server("mine")})
    assert added.agent_id == "team_1"
    assert [service.name for service in await control.list_services("team_1")] == ["state", "mine"]
    assert [service.name for service in await control.list_services("team_2")] == ["state"]
    with pytest.raises(UnknownServiceError):
        await control.service_status(STORE, "mine")
    with pytest.raises(InvalidSessionKeyError, match="agent id"):
        await control.list_services("no spaces allowed")


# Tools.


async def test_a_tool_resolves_by_its_short_name_or_its_prefixed_name(harness: Harness) -> None:
    for name in ("recall", "state_recall"):
        tool = await harness.control.resolve_tool(STORE, None, name)
        assert (tool.name, tool.service, tool.tool) == ("state_recall", "state", "recall")


async def test_a_short_name_several_services_offer_is_ambiguous_and_lists_the_candidates(tmp_path: Path) -> None:
    async with control_over(tmp_path, {"a": fixture_server("a"), "b": fixture_server("b")}) as harness:
        with pytest.raises(AmbiguousToolError) as ambiguous:
            await harness.control.resolve_tool(STORE, None, "echo")
        assert "'a_echo', 'b_echo'" in ambiguous.value.message
        with pytest.raises(AmbiguousToolError):
            await harness.control.call_tool(STORE, None, "echo", {"text": "hi"})
        assert (await harness.control.resolve_tool(STORE, None, "b_echo")).service == "b"


async def test_in_a_session_a_short_name_means_the_tool_of_its_bound_service(tmp_path: Path) -> None:
    async with control_over(tmp_path, {"a": fixture_server("a"), "b": fixture_server("b")}) as harness:
        control = harness.control
        await control.open_session(STORE, "task")
        await control.bind_service(STORE, "task", "b")
        assert (await control.resolve_tool(STORE, "task", "echo")).name == "b_echo"
        assert await harness.call("task", "echo", {"text": "hi"}) == "hi"
        assert {tool.service for tool in await control.list_tools(STORE, "task")} == {"b"}
        assert {tool.service for tool in await control.list_tools(STORE, "task", all_services=True)} == {"a", "b"}


async def test_an_unknown_tool_name_is_unknown(harness: Harness) -> None:
    with pytest.raises(UnknownToolError, match="no tool named 'nothing' here"):
        await harness.control.resolve_tool(STORE, None, "nothing")
    with pytest.raises(UnknownToolError):
        await harness.control.call_tool(STORE, None, "nothing", {})


async def test_listed_tools_hide_the_proxys_session_argument_but_keep_an_upstreams_own(tmp_path: Path) -> None:
    async with control_over(tmp_path, {"state": fixture_server("state", "--session-arg-tool")}) as harness:
        tools = {tool.name: tool for tool in await harness.control.list_tools(STORE)}
        assert "session_id" not in tools["state_echo"].input_schema["properties"]
        assert "text" in tools["state_echo"].input_schema["properties"]
        assert set(tools["state_tagged"].input_schema["properties"]) == {"session_id"}  # not the alias either
        assert await harness.call(None, "tagged", {"session_id": "mine"}) == "tag=mine"


async def test_a_call_outside_any_session_runs_in_a_fresh_upstream_session(harness: Harness) -> None:
    await harness.call(None, "state_remember", {"value": "lost"})
    assert await harness.call(None, "state_recall") == []


# Sessions.


async def test_open_session_reports_real_times_and_nothing_bound(harness: Harness) -> None:
    info = await harness.control.open_session(STORE, "task")
    now = dt.datetime.fromtimestamp(harness.clock.now(), tz=dt.UTC)
    assert info.session_id == "task"
    assert info.agent_id is None
    assert info.is_active
    assert info.created_at == info.last_active == now
    assert info.expires_at == now + dt.timedelta(seconds=IDLE_SECONDS)
    assert info.expires_in_seconds == IDLE_SECONDS
    assert (info.bound_services, info.service_count, info.tool_count, info.tools) == ([], 0, 0, [])
    assert info.connection_status == {}
    assert (await harness.control.open_session(STORE, "task")).created_at == now  # opening again finds it


async def test_find_and_list_sessions_see_only_the_scopes_open_sessions(harness: Harness) -> None:
    control = harness.control
    assert await control.find_session(STORE, "task") is None
    await control.open_session(STORE, "task")
    await control.open_session("team_1", "task")
    await control.open_session("team_1", "other")
    found = await control.find_session(STORE, "task")
    assert found is not None
    assert found.agent_id is None
    assert [info.session_id for info in await control.list_sessions(STORE)] == ["task"]
    listed = await control.list_sessions("team_1")
    assert sorted(info.session_id for info in listed) == ["other", "task"]
    assert {info.agent_id for info in listed} == {"team_1"}


async def test_a_malformed_session_name_is_refused(harness: Harness) -> None:
    with pytest.raises(InvalidSessionKeyError, match="a session id must be a printable string"):
        await harness.control.open_session(STORE, "")


async def test_bind_service_starts_the_sessions_upstream_and_lists_its_tools(harness: Harness) -> None:
    control = harness.control
    await control.open_session(STORE, "task")
    live = set(harness.upstreams.live)
    info = await control.bind_service(STORE, "task", "state")
    assert len(harness.upstreams.live - live) == 1  # the session's own upstream instance, started now
    assert (info.bound_services, info.service_count) == (["state"], 1)
    assert info.connection_status == {"state": "connected"}
    assert sorted(info.tools) == sorted(tool.name for tool in await control.list_tools(STORE))
    assert info.tool_count == len(info.tools) > 0
    # Binding again changes nothing.
    assert (await control.bind_service(STORE, "task", "state")).bound_services == ["state"]
    with pytest.raises(UnknownServiceError):
        await control.bind_service(STORE, "task", "nothing")


async def test_a_session_keeps_upstream_state_between_calls(harness: Harness) -> None:
    await harness.control.open_session(STORE, "task")
    await harness.call("task", "remember", {"value": "one"})
    assert await harness.call("task", "state_remember", {"value": "two"}) == ["one", "two"]
    assert await harness.call("task", "recall") == ["one", "two"]


async def test_extend_moves_the_expiry_by_exactly_the_seconds_given(harness: Harness) -> None:
    opened = await harness.control.open_session(STORE, "task")
    extended = await harness.control.extend_session(STORE, "task", 100)
    assert extended.expires_at == opened.expires_at + dt.timedelta(seconds=100)
    assert extended.expires_in_seconds == IDLE_SECONDS + 100
    with pytest.raises(ConfigError, match="finite number of seconds"):
        await harness.control.extend_session(STORE, "task", math.nan)


async def test_a_use_keeps_the_session_alive_for_the_idle_timeout_from_then(harness: Harness) -> None:
    opened = await harness.control.open_session(STORE, "task")
    harness.clock.advance(IDLE_SECONDS / 2)
    await harness.call("task", "state_echo", {"text": "still here"})
    info = await harness.control.session_info(STORE, "task")
    assert info.created_at == opened.created_at
    assert info.last_active == opened.created_at + dt.timedelta(seconds=IDLE_SECONDS / 2)
    assert info.expires_in_seconds == IDLE_SECONDS


async def test_an_expired_session_is_closed_with_its_upstream_sessions(harness: Harness) -> None:
    await harness.control.open_session(STORE, "task")
    await harness.control.bind_service(STORE, "task", "state")
    identity = await harness.identity("task")
    harness.clock.advance(IDLE_SECONDS + 1)
    await wait_until(lambda: not harness.upstreams.is_alive(identity), what="the expired session's upstream to stop")
    assert await harness.control.find_session(STORE, "task") is None


async def test_restart_session_gives_the_bound_services_fresh_upstream_sessions(harness: Harness) -> None:
    control = harness.control
    await control.open_session(STORE, "task")
    await control.bind_service(STORE, "task", "state")
    await harness.call("task", "remember", {"value": "old"})
    before = await harness.identity("task")
    info = await control.restart_session(STORE, "task")
    assert info.connection_status == {"state": "connected"}
    assert not harness.upstreams.is_alive(before)
    assert await harness.identity("task") != before
    assert await harness.call("task", "recall") == []


async def test_clear_cache_reads_the_sessions_listings_again(harness: Harness) -> None:
    control = harness.control
    await control.open_session(STORE, "task")
    await control.bind_service(STORE, "task", "state")
    # The upstream grows a tool without saying so: only a fresh listing shows it.
    await harness.call("task", "grow", {"name": "sprout", "announce": False})
    assert "state_sprout" not in (await control.session_info(STORE, "task")).tools
    info = await control.clear_cache(STORE, "task")
    assert "state_sprout" in info.tools
    assert info.tool_count == len(info.tools)
    sprouted = await harness.control.call_tool(STORE, "task", "sprout", {})
    assert text_of(sprouted) == "I am sprout"


async def test_close_session_ends_it_and_its_upstream_sessions(harness: Harness) -> None:
    control = harness.control
    await control.open_session(STORE, "task")
    await control.bind_service(STORE, "task", "state")
    await harness.call("task", "remember", {"value": "gone"})
    identity = await harness.identity("task")
    await control.close_session(STORE, "task")
    assert not harness.upstreams.is_alive(identity)
    assert await control.find_session(STORE, "task") is None
    assert await control.list_sessions(STORE) == []


NEEDS_AN_OPEN_SESSION: Final[dict[str, Callable[[Control], Awaitable[object]]]] = {
    "session_info": lambda control: control.session_info(STORE, "task"),
    "extend_session": lambda control: control.extend_session(STORE, "task", 60),
    "restart_session": lambda control: control.restart_session(STORE, "task"),
    "clear_cache": lambda control: control.clear_cache(STORE, "task"),
    "resolve_tool": lambda control: control.resolve_tool(STORE, "task", "recall"),
    "call_tool": lambda control: control.call_tool(STORE, "task", "recall", {}),
}


@pytest.mark.parametrize("operation", NEEDS_AN_OPEN_SESSION)
async def test_a_closed_session_refuses_what_needs_it_open(harness: Harness, operation: str) -> None:
    await harness.control.open_session(STORE, "task")
    await harness.control.close_session(STORE, "task")
    with pytest.raises(SessionClosedError, match="session 'task' is closed or was never opened"):
        await NEEDS_AN_OPEN_SESSION[operation](harness.control)
    assert await harness.control.find_session(STORE, "task") is None  # refusing did not reopen it


async def test_a_call_that_may_open_its_session_reopens_a_closed_one_with_fresh_state(harness: Harness) -> None:
    await harness.call("task", "state_remember", {"value": "old"}, opens=True)
    await harness.control.close_session(STORE, "task")
    assert await harness.call("task", "state_recall", opens=True) == []
    assert (await harness.control.session_info(STORE, "task")).is_active


async def test_an_agents_session_is_not_the_stores_session_of_the_same_name(harness: Harness) -> None:
    await harness.call("task", "state_remember", {"value": "store's"}, opens=True)
    agent_says = await harness.control.call_tool("team_1", "task", "state_recall", {}, opens=True)
    assert structured(agent_says) == []
    assert (await harness.control.session_info("team_1", "task")).agent_id == "team_1"
