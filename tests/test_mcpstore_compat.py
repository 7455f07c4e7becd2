"""MCPStore code runs with only the import changed: the MCPStore 1.x forms and behaviours scripts rely on, in both
modes (embedded, and against a running proxy), with the upstreams in memory (`tests.inprocess.sdk_store`).

- `with_session_async` works with `async with` and with `async with await` (MCPStore's is a coroutine);
- `add_service` of an entry already there is a no-op, so a script runs twice where services persist; a different
  entry under the name is refused naming `update_service` and `remove_service`; `update_service` replaces it;
- `wait_service` waits through failed starts and their retries, and at its timeout names the last failure;
- unknown names of tools, services, sessions and agents come with the closest real ones;
- a tool's error answer is returned (and logged at WARNING), or raised with `raise_on_error=True`;
- LangChain tools hand images and other content to the agent as standard content blocks, under undoubled names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest
from langchain_core.messages import ToolMessage
from langchain_core.messages.tool import ToolCall
from mcp import MCPError, types

from mcpstore_proxy import (
    ConfigError,
    MCPStore,
    SessionClosedError,
    UnknownServiceError,
    UnknownToolError,
    UpstreamStartError,
)
from mcpstore_proxy.config import load_settings
from mcpstore_proxy.control import Control, ToolInfo
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import PermissionDeniedError, ToolError
from mcpstore_proxy.langchain import langchain_names
from mcpstore_proxy.principals import Principal
from mcpstore_proxy.registry import ServicePolicy
from tests.conversation import structured, text_of
from tests.fixtures.stateful_server import _PIXEL as PIXEL  # pyright: ignore[reportPrivateUsage]  # the rich tool's image
from tests.inprocess import SdkHarness, running_app, sdk_store
from tests.memory import MemoryUpstreams
from tests.support import admin, connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state")}, allow_stdio_services_via_api=True)


@pytest.fixture
async def harness(config: Path, mode: str) -> AsyncGenerator[SdkHarness]:
    async with sdk_store(config, mode) as opened:
        yield opened


@pytest.fixture
def store(harness: SdkHarness) -> MCPStore:
    return harness.store


# with_session_async.


async def test_with_session_async_works_with_async_with_and_with_async_with_await(store: MCPStore) -> None:
    context = store.for_store()
    async with context.with_session_async("plain") as session:
        await session.bind_service_async("state")
        await session.use_tool_async("remember", {"value": "plain"})
        assert structured(await context.use_tool_async("recall")) == ["plain"]
    async with await context.with_session_async("awaited") as session:
        await session.bind_service_async("state")
        await session.use_tool_async("remember", {"value": "awaited"})
        assert structured(await session.use_tool_async("recall")) == ["awaited"]
        assert structured(await context.use_tool_async("recall")) == ["awaited"]  # the block's session is current
    assert await context.find_session_async("plain") is None
    assert await context.find_session_async("awaited") is None


# add_service and update_service.


async def test_adding_the_same_service_again_changes_nothing_and_keeps_its_sessions(store: MCPStore) -> None:
    context = store.for_store()
    entry = {"name": "extra", **fixture_server("extra")}
    context.add_service(entry)
    context.wait_service("extra", timeout=60)
    session = context.create_session("kept").bind_service("extra")
    identity = int(structured(session.use_tool("whoami")))

    context.add_service(entry)
    context.add_service({"mcpServers": {"extra": fixture_server("extra")}})
    context.add_service({"mcpServers": {"state": fixture_server("state")}})  # the config's own, the same entry

    assert context.service_status("extra").state == "ready"
    assert int(structured(session.use_tool("whoami"))) == identity  # nothing was restarted
    session.close_session()
    context.remove_service("extra")


async def test_a_different_entry_under_a_taken_name_is_refused_naming_update_and_remove(store: MCPStore) -> None:
    context = store.for_store()
    context.add_service({"name": "extra", **fixture_server("extra")})
    with pytest.raises(ConfigError) as refused:
        context.add_service({"name": "extra", **fixture_server("extra", "--extra-tool", "more")})
    message = refused.value.message
    assert "a service named 'extra' already exists with a different entry (differs in args)" in message
    assert "update_service('extra', entry)" in message
    assert "remove_service('extra')" in message
    with pytest.raises(ConfigError, match="'state' already exists in the config file with a different entry"):
        context.add_service({"name": "state", **fixture_server("other")})
    context.remove_service("extra")


async def test_update_service_replaces_the_entry_and_bound_sessions_carry_on_with_the_new_one(
    harness: SdkHarness,
) -> None:
    context = harness.store.for_store()
    context.add_service({"name": "extra", **fixture_server("extra")})
    context.wait_service("extra", timeout=60)
    session = context.create_session("task").bind_service("extra")
    before = int(structured(session.use_tool("whoami")))

    context.update_service("extra", fixture_server("extra", "--extra-tool", "more"))  # MCPStore's form
    context.wait_service("extra", timeout=60)

    assert "extra_more" in {tool.name for tool in context.list_tools()}
    assert session.list_services() == ["extra"]
    after = int(structured(session.use_tool("whoami")))
    assert after != before
    await wait_until(lambda: not harness.is_alive(before), what="the replaced service's session to stop")
    assert text_of(session.use_tool("more")) == "extra"

    context.update_service({"name": "extra", **fixture_server("extra", "--extra-tool", "more")})  # unchanged
    assert int(structured(session.use_tool("whoami"))) == after
    session.close_session()
    context.remove_service("extra")


async def test_update_service_refuses_a_config_file_service_and_suggests_a_name_for_an_unknown_one(
    store: MCPStore,
) -> None:
    context = store.for_store()
    with pytest.raises(ConfigError, match="'state' comes from the config file; change it there"):
        context.update_service("state", fixture_server("state", "--extra-tool", "more"))
    with pytest.raises(UnknownServiceError, match="no service named 'stat' here; did you mean 'state'"):
        context.update_service("stat", fixture_server("state"))


async def test_the_admin_api_replaces_a_service_for_those_who_may_add_and_remove_it(tmp_path: Path) -> None:
    ops = {"Authorization": "Bearer ops-token-0123456789"}
    alice = {"Authorization": "Bearer alice-token-0123456789"}
    tokens = [
        {"token": "ops-token-0123456789", "principal": "ops", "admin": True},
        {"token": "alice-token-0123456789", "principal": "alice", "agents": ["team_1"]},
    ]
    config = write_config(tmp_path, {}, auth={"tokens": tokens}, allow_stdio_services_via_api=True)
    async with running_app(config) as proxy:
        added = await admin(proxy.port, "POST", "/services", {"name": "extra", **fixture_server("extra")}, **ops)
        assert added.status_code == 200, added.text
        entry = fixture_server("extra", "--extra-tool", "more")
        refused = await admin(proxy.port, "PUT", "/services/extra", entry, **alice)
        assert refused.status_code == 403, refused.text  # the store's services are the operators'
        shape = await admin(proxy.port, "PUT", "/services/extra", {"mcpServers": {"extra": entry}}, **ops)
        assert shape.status_code == 400, shape.text
        assert "the body must be the entry of service 'extra' itself" in shape.json()["error"]["message"]
        replaced = await admin(proxy.port, "PUT", "/services/extra", entry, **ops)
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["name"] == "extra"
        mine = await admin(
            proxy.port, "POST", "/services?agent=team_1", {"name": "mine", **fixture_server("a")}, **alice
        )
        assert mine.status_code == 200, mine.text
        updated = await admin(proxy.port, "PUT", "/services/mine?agent=team_1", fixture_server("b"), **alice)
        assert updated.status_code == 200, updated.text  # an agent's own services are its granted principals'


async def test_a_script_that_adds_its_service_runs_twice_where_services_persist(config: Path, mode: str) -> None:
    def script(store: MCPStore) -> list[str]:
        store.for_store().add_service({"name": "notes", **fixture_server("notes")})
        store.for_store().wait_service("notes", timeout=60)
        with store.for_store().with_session("task") as session:
            session.bind_service("notes")
            session.use_tool("remember", {"value": "run"})
            return structured(session.use_tool("recall"))

    if mode == "embedded":
        for _ in range(2):  # each run a fresh store over the same config: the service comes back from its file
            async with sdk_store(config, "embedded") as harness:
                assert await anyio.to_thread.run_sync(script, harness.store) == ["run"]
        return
    async with running_app(config) as proxy:
        for _ in range(2):
            with MCPStore.setup_store(url=proxy.url) as store:
                assert await anyio.to_thread.run_sync(script, store) == ["run"]


# wait_service.


async def test_wait_service_waits_through_failed_starts_until_the_service_comes_up(
    store: MCPStore, tmp_path: Path
) -> None:
    context = store.for_store()
    ready_flag = tmp_path / "ready"
    context.add_service({"name": "late", **fixture_server("late", "--fail-until", str(ready_flag))})
    await wait_until(lambda: context.service_status("late").state == "failed", what="the first start to fail")
    ready_flag.touch()  # the next retry (a backoff away: the wait starts on a failed service) succeeds

    assert context.wait_service("late", timeout=60).state == "ready"
    context.remove_service("late")


async def test_wait_service_gives_up_at_its_timeout_naming_the_last_failure(store: MCPStore) -> None:
    context = store.for_store()
    context.add_service({"name": "broken", **fixture_server("broken", "--fail-start", "no luck")})
    started = time.monotonic()
    with pytest.raises(UpstreamStartError) as late:
        context.wait_service("broken", timeout=0.5)
    assert time.monotonic() - started >= 0.5  # it failed at once, but the wait went on through the retries
    assert late.value.upstream == "broken"
    assert (
        late.value.message
        == "upstream 'broken' failed to start: it exited during the handshake (check mcpServers.broken.command)"
    )
    assert "its stderr said: no luck" in str(late.value)  # the stderr is detail, which the operator's own SDK sees
    context.remove_service("broken")


# Unknown names.


async def test_unknown_names_come_with_the_closest_real_ones(store: MCPStore) -> None:
    context = store.for_store()
    with pytest.raises(UnknownToolError, match="no tool named 'remembr' here; did you mean 'remember'"):
        context.use_tool("remembr", {"value": "x"})
    with pytest.raises(UnknownToolError, match="did you mean 'state_recall'"):
        context.use_tool("state_recal")
    with pytest.raises(UnknownServiceError, match="no service named 'stat' here; did you mean 'state'"):
        context.service_status("stat")
    with context.with_session("browser_task") as session:
        with pytest.raises(UnknownServiceError, match="did you mean 'state'"):
            session.bind_service("states")
        with pytest.raises(SessionClosedError, match=r"never opened; .*; did you mean 'browser_task'"):
            context.with_session("browser_tsak").session_info()
    with pytest.raises(UnknownToolError) as unknown:
        context.use_tool("completely_different")
    assert "did you mean" not in unknown.value.message


async def test_an_mcp_client_of_the_proxy_hears_the_closest_tool_names_too(config: Path) -> None:
    async with running_app(config) as proxy, connect(proxy.url) as client:
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("state_remembr", {"value": "x"})
    assert unknown.value.error.code == types.INVALID_PARAMS
    assert "Unknown tool: 'state_remembr'; did you mean 'state_remember'?" in unknown.value.message


async def test_an_agent_a_principal_is_not_granted_is_refused_naming_the_granted_one(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {"state": fixture_server("state")}))
    async with ProxyEngine(settings, transports=MemoryUpstreams()) as engine:
        await engine.started()
        alice = Principal("alice", frozenset({"team_1"}))
        control = Control(engine, policy=ServicePolicy()).acting_for(alice)
        with pytest.raises(PermissionDeniedError, match="may not use agent 'team1'; did you mean 'team_1'"):
            await control.list_services("team1")


# Error answers.


async def test_an_error_answer_is_returned_and_logged_or_raised_when_asked(
    store: MCPStore, caplog: pytest.LogCaptureFixture
) -> None:
    context = store.for_store()
    with caplog.at_level(logging.WARNING, logger="mcpstore_proxy"):
        result = context.use_tool("rich", {"fail": True})
    assert result.is_error
    assert text_of(result) == "hello"
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.name.startswith("mcpstore_proxy.")
    assert warning.getMessage() == "tool 'rich' answered with an error: hello"

    with pytest.raises(ToolError) as raised:
        context.use_tool("rich", {"fail": True}, raise_on_error=True)
    assert (raised.value.tool, raised.value.text, raised.value.result.is_error) == ("rich", "hello", True)
    with pytest.raises(ToolError, match="tool 'rich' answered with an error: hello"):
        await context.use_tool_async("rich", {"fail": True}, raise_on_error=True)
    async with context.with_session_async("task") as session:
        with pytest.raises(ToolError):
            session.use_tool("rich", {"fail": True}, raise_on_error=True)
        with pytest.raises(ToolError):
            await session.call_tool_async("rich", {"fail": True}, raise_on_error=True)
        assert not session.use_tool("rich", raise_on_error=True).is_error


# LangChain.


def _tool_call(name: str, arguments: dict[str, Any]) -> ToolCall:
    return ToolCall(name=name, args=arguments, id="call-1", type="tool_call")


def _without_ids(blocks: Any) -> list[dict[str, Any]]:
    return [{key: value for key, value in block.items() if key != "id"} for block in blocks]


async def test_langchain_tools_hand_images_and_other_content_to_the_agent_as_content_blocks(store: MCPStore) -> None:
    tools = {tool.name: tool for tool in store.for_store().for_langchain().list_tools()}
    rich = tools["state_rich"]
    message = rich.invoke(_tool_call(rich.name, {}))
    assert isinstance(message, ToolMessage)
    assert message.status == "success"
    assert _without_ids(message.content) == [
        {"type": "text", "text": "hello"},
        {"type": "image", "base64": PIXEL, "mime_type": "image/png"},
        {"type": "file", "base64": PIXEL, "mime_type": "audio/wav"},  # a tool message takes no audio blocks
        {"type": "text", "text": "embedded"},
    ]
    assert isinstance(message.artifact, types.CallToolResult)
    assert message.artifact.structured_content == {"answer": 42, "nested": {"list": [1, 2, 3]}}

    failed = rich.invoke(_tool_call(rich.name, {"fail": True}))
    assert isinstance(failed, ToolMessage)
    assert (failed.status, failed.content) == ("error", "Error: hello")
    assert tools["state_echo"].invoke({"text": "plain text stays text"}) == "plain text stays text"


async def test_langchain_names_never_carry_a_doubled_prefix(store: MCPStore) -> None:
    context = store.for_store()
    context.add_service({"name": "web", **fixture_server("web", "--extra-tool", "web_open")})
    context.wait_service("web", timeout=60)
    names = {tool.name for tool in context.for_langchain().list_tools()}
    assert "web_web_open" in {tool.name for tool in context.list_tools()}  # the proxy's own name
    assert {"web_open", "web_echo", "state_echo"} <= names
    assert not any(name.startswith("web_web_") for name in names)
    context.remove_service("web")


def test_a_tool_keeps_its_own_name_only_while_no_other_tool_has_it() -> None:
    def info(name: str, service: str, tool: str) -> ToolInfo:
        return ToolInfo(name=name, service=service, tool=tool, description=None, input_schema={"type": "object"})

    doubled = info("browser_browser_navigate", "browser", "browser_navigate")
    assert langchain_names([doubled, info("browser_echo", "browser", "echo")]) == {
        "browser_browser_navigate": "browser_navigate",
        "browser_echo": "browser_echo",
    }
    # A bare (prefix "") tool already has the name: both keep the proxy's names.
    bare = info("browser_navigate", "other", "browser_navigate")
    assert langchain_names([doubled, bare]) == {
        "browser_browser_navigate": "browser_browser_navigate",
        "browser_navigate": "browser_navigate",
    }
    # Two tools would both shorten to the same name (prefixes `a` and `a_b`, tool `a_b_c`): neither does.
    assert langchain_names([info("a_a_b_c", "a", "a_b_c"), info("a_b_a_b_c", "a_b", "a_b_c")]) == {
        "a_a_b_c": "a_a_b_c",
        "a_b_a_b_c": "a_b_a_b_c",
    }
