"""The remote backend (the SDK against a running proxy) behaves like the embedded one: control operations
over the admin API, tool calls over MCP carrying the session and agent headers, and every error of ours
raised as the same exception class either way.

The proxy runs in this process (`running_app`), its upstreams in memory; the embedded backend gets the same
config and in-memory upstreams, so the two can be compared case by case.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest

from mcpstore_proxy.backends import Backend
from mcpstore_proxy.backends.embedded import embedded_backend
from mcpstore_proxy.backends.remote import remote_backend
from mcpstore_proxy.config import load_settings
from mcpstore_proxy.errors import (
    AmbiguousToolError,
    ConfigError,
    InvalidSessionKeyError,
    ProxyError,
    SessionClosedError,
    UnknownServiceError,
    UnknownToolError,
    UpstreamClosedError,
    UpstreamError,
    UpstreamStartError,
)
from tests.clock import ManualClock
from tests.conversation import structured
from tests.inprocess import InProcessProxy, running_app
from tests.memory import MemoryUpstreams
from tests.support import admin, connect, fixture_server, free_port, write_config

pytestmark = pytest.mark.anyio

STORE: Final = ""


@asynccontextmanager
async def backend_over(config: Path, mode: str) -> AsyncGenerator[Backend]:
    """The SDK's backend over `config`: the engine in this task (`embedded`), or a proxy served in process."""
    if mode == "embedded":
        upstreams = MemoryUpstreams()
        async with embedded_backend(load_settings(config), transports=upstreams, clock=ManualClock()) as control:
            yield control
        assert not upstreams.live, f"upstream instances {sorted(upstreams.live)} outlived the engine"
        return
    async with running_app(config) as proxy, remote_backend(proxy.url) as backend:
        yield backend


@asynccontextmanager
async def remote_over(config: Path) -> AsyncGenerator[tuple[InProcessProxy, Backend]]:
    async with running_app(config) as proxy, remote_backend(proxy.url) as backend:
        yield proxy, backend


Operation = Callable[[Backend], Awaitable[object]]

FAILING_OPERATIONS: Final[dict[str, tuple[Operation, type[ProxyError]]]] = {
    "status of an unknown service": (lambda b: b.service_status(STORE, "nothing"), UnknownServiceError),
    "binding an unknown service": (lambda b: b.bind_service(STORE, "task", "nothing"), UnknownServiceError),
    "info of a session never opened": (lambda b: b.session_info(STORE, "never"), SessionClosedError),
    "extending a session never opened": (lambda b: b.extend_session(STORE, "never", 5), SessionClosedError),
    "a call in a session never opened": (
        lambda b: b.call_tool(STORE, "never", "state_recall", {}),
        SessionClosedError,
    ),
    "a short name two services offer": (lambda b: b.call_tool(STORE, None, "echo", {"text": "x"}), AmbiguousToolError),
    "an unknown tool": (lambda b: b.call_tool(STORE, None, "nothing", {}), UnknownToolError),
    "waiting for a service that fails": (lambda b: b.wait_service(STORE, "broken", 3), UpstreamStartError),
    "adding a malformed entry": (
        lambda b: b.add_services(STORE, {"name": "bad", "command": "x", "colour": "red"}),
        ConfigError,
    ),
    "adding a name already taken": (lambda b: b.add_services(STORE, {"name": "state", "url": "http://x"}), ConfigError),
    "removing a configured service": (lambda b: b.remove_service(STORE, "state"), ConfigError),
    "a malformed agent id": (lambda b: b.list_services("no spaces"), InvalidSessionKeyError),
    "an upstream that crashes mid-call": (lambda b: b.call_tool(STORE, None, "state_crash", {}), UpstreamClosedError),
}


async def test_every_error_comes_back_as_the_same_exception_class_in_both_modes(tmp_path: Path, mode: str) -> None:
    servers = {
        "state": fixture_server("state"),
        "other": fixture_server("other"),
        "broken": fixture_server("broken", "--fail-start", "no luck"),
    }
    config = write_config(tmp_path, servers, allow_stdio_services_via_api=True)
    raised: dict[str, type[BaseException] | None] = {}
    messages: dict[str, str] = {}
    async with backend_over(config, mode) as backend:
        for case, (operation, _) in FAILING_OPERATIONS.items():
            try:
                await operation(backend)
            except ProxyError as error:
                raised[case] = type(error)
                messages[case] = str(error)  # with the detail an operator sees (the upstream's stderr)
                if isinstance(error, UpstreamError):
                    messages[case] += f" [upstream {error.upstream!r}]"
            else:
                raised[case] = None
    assert raised == {case: expected for case, (_, expected) in FAILING_OPERATIONS.items()}
    # The messages are the proxy's own, not an HTTP status or a generic wrapper.
    assert "no luck" in messages["waiting for a service that fails"]
    assert "'nothing'" in messages["status of an unknown service"]
    assert "'other_echo', 'state_echo'" in messages["a short name two services offer"]
    assert messages["an upstream that crashes mid-call"].endswith("[upstream 'state']")


async def test_session_operations_behave_the_same_in_both_modes(tmp_path: Path, mode: str) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, session_idle_timeout_seconds=600)
    async with backend_over(config, mode) as backend:
        opened = await backend.open_session(STORE, "task")
        assert (opened.session_id, opened.is_active, opened.bound_services) == ("task", True, [])
        bound = await backend.bind_service(STORE, "task", "state")
        assert bound.connection_status == {"state": "connected"}
        assert structured(await backend.call_tool(STORE, "task", "remember", {"value": "v"})) == ["v"]
        extended = await backend.extend_session(STORE, "task", 60)
        assert extended.expires_in_seconds == pytest.approx(opened.expires_in_seconds + 60, abs=5)
        assert [info.session_id for info in await backend.list_sessions(STORE)] == ["task"]
        assert [tool.service for tool in await backend.list_tools(STORE, "task")] == ["state"] * bound.tool_count
        assert (await backend.clear_cache(STORE, "task")).tool_count == bound.tool_count
        assert (await backend.restart_session(STORE, "task")).connection_status == {"state": "connected"}
        assert structured(await backend.call_tool(STORE, "task", "recall", {})) == []
        await backend.close_session(STORE, "task")
        assert await backend.find_session(STORE, "task") is None


async def test_tool_calls_carry_the_session_and_the_agent_to_the_proxy(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with remote_over(config) as (proxy, backend):
        await backend.call_tool("team_1", "task", "state_remember", {"value": "agent's"}, opens=True)
        # The same session, reached by a plain MCP client naming the agent and the session.
        agent_url = proxy.url.replace("/mcp", "/agents/team_1/mcp")
        async with connect(agent_url, headers={"X-MCPStore-Session": "task"}) as client:
            assert structured(await client.call_tool("state_recall", {})) == ["agent's"]
        # The store's session of the same name is another one.
        async with connect(proxy.url, headers={"X-MCPStore-Session": "task"}) as client:
            assert structured(await client.call_tool("state_recall", {})) == []
        assert (await admin(proxy.port, "GET", "/sessions/task?agent=team_1")).json()["agent_id"] == "team_1"


async def test_a_call_in_a_session_closed_elsewhere_is_refused_instead_of_reopening_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with remote_over(config) as (proxy, backend):
        await backend.open_session(STORE, "task")
        await backend.call_tool(STORE, "task", "state_remember", {"value": "v"})
        assert (await admin(proxy.port, "DELETE", "/sessions/task")).status_code == 200  # another client closes it
        with pytest.raises(SessionClosedError, match="session 'task' is closed"):
            await backend.call_tool(STORE, "task", "state_recall", {})
        assert (await admin(proxy.port, "GET", "/sessions/task")).status_code == 404  # still closed
        assert structured(await backend.call_tool(STORE, "task", "state_recall", {}, opens=True)) == []


async def test_a_remembered_tool_name_is_resolved_again_once_when_it_vanishes(tmp_path: Path) -> None:
    config = write_config(tmp_path, {}, allow_stdio_services_via_api=True)
    async with remote_over(config) as (proxy, backend):
        await backend.add_services(STORE, {"name": "one", **fixture_server("one")})
        await backend.wait_service(STORE, "one", 10)
        first = structured(await backend.call_tool(STORE, None, "whoami", {}))
        # Another client swaps the service for one of another name, behind this backend's back.
        assert (await admin(proxy.port, "DELETE", "/services/one")).status_code == 200
        added = await admin(proxy.port, "POST", "/services", {"name": "two", **fixture_server("two")})
        assert added.status_code == 200, added.text
        assert (await admin(proxy.port, "POST", "/services/two/wait?timeout=10")).json()["state"] == "ready"
        second = structured(await backend.call_tool(STORE, None, "whoami", {}))  # "one_whoami" is gone
        assert second != first
        # Once the tool is gone for good, the call fails as the embedded backend's would.
        assert (await admin(proxy.port, "DELETE", "/services/two")).status_code == 200
        with pytest.raises(UnknownToolError, match="no tool named 'whoami' here"):
            await backend.call_tool(STORE, None, "whoami", {})


async def test_a_proxy_that_is_not_there_is_named_with_the_fix() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    async with remote_backend(url) as backend:
        with pytest.raises(ProxyError) as unreachable:
            await backend.list_services(STORE)
    assert type(unreachable.value) is ProxyError
    assert f"cannot reach the proxy at {url.removesuffix('/mcp')}" in unreachable.value.message
    assert "is `mcpstore-proxy serve` running?" in unreachable.value.message


async def test_an_upstream_error_from_a_control_operation_names_its_upstream_in_both_modes(
    tmp_path: Path, mode: str
) -> None:
    config = write_config(tmp_path, {"broken": fixture_server("broken", "--fail-start", "no luck")})
    async with backend_over(config, mode) as backend:
        with pytest.raises(UpstreamStartError) as failed:
            await backend.wait_service(STORE, "broken", 3)
        with pytest.raises(UpstreamStartError) as bind_failed:
            await backend.bind_service(STORE, "task", "broken")
    assert failed.value.upstream == "broken"
    assert bind_failed.value.upstream == "broken"
