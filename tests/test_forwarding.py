"""What upstreams start reaches the right client: sampling, elicitation, roots, logs, progress, cancellation,
list changes; and results arrive exactly as the upstream sent them.

The proxy runs in this process (`running_app`) with its upstreams in memory: the stateful fixture through
`MemoryUpstreams`, and the conformance fixture in memory too (`MemoryUpstreams(scripts=...)`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError, types
from mcp.client.session import ClientRequestContext

from tests.conversation import set_log_level, structured, text_of
from tests.fixtures.conformance_server import ConformanceFixtures
from tests.fixtures.stateful_server import ProcessHost, build, parse
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import CONFORMANCE_SERVER, connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio


def conformance_in_memory() -> MemoryUpstreams:
    """Upstreams in memory, tests/fixtures/conformance_server.py among them."""
    return MemoryUpstreams(scripts={CONFORMANCE_SERVER: lambda: ConformanceFixtures().build_server()})


def conformance_upstream(**options: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(CONFORMANCE_SERVER)], "prefix": "", **options}


def answering(text: str) -> Any:
    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=text), model="test-model"
        )

    return sampling


async def test_each_clients_sampling_request_is_answered_by_that_client(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with (
        running_app(config) as proxy,
        connect(proxy.url, sampling_callback=answering("from alice")) as alice,
        connect(proxy.url, sampling_callback=answering("from bob")) as bob,
    ):
        assert structured(await alice.call_tool("state_ask", {"prompt": "who?"})) == "from alice"
        assert structured(await bob.call_tool("state_ask", {"prompt": "who?"})) == "from bob"


async def test_elicitation_is_answered_through_the_proxy(tmp_path: Path) -> None:
    asked: list[str] = []

    async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    config = write_config(tmp_path, {"conformance": conformance_upstream()})
    async with (
        running_app(config, upstreams=conformance_in_memory()) as proxy,
        connect(proxy.url, elicitation_callback=elicit) as client,
    ):
        result = await client.call_tool("test_elicitation", {"message": "Who are you?"})
        assert asked == ["Who are you?"]
        assert "ada@example.com" in text_of(result)


async def test_roots_are_asked_of_the_client_that_owns_the_session(tmp_path: Path) -> None:
    def roots_of(uri: str) -> Any:
        async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
            return types.ListRootsResult(roots=[types.Root.model_validate({"uri": uri, "name": "work"})])

        return list_roots

    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with (
        running_app(config) as proxy,
        connect(proxy.url, list_roots_callback=roots_of("file:///alice")) as alice,
        connect(proxy.url, list_roots_callback=roots_of("file:///bob")) as bob,
    ):
        assert structured(await alice.call_tool("state_roots", {})) == ["file:///alice"]
        assert structured(await bob.call_tool("state_roots", {})) == ["file:///bob"]


async def test_a_session_declares_upstream_only_the_capabilities_its_client_declared(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"conformance": conformance_upstream()})
    async with (
        running_app(config, upstreams=conformance_in_memory()) as proxy,
        connect(proxy.url) as plain,
        connect(proxy.url, sampling_callback=answering("sampled")) as sampler,
    ):
        refused = await plain.call_tool("test_sampling", {"prompt": "hello?"})
        assert refused.is_error
        assert text_of(refused) == "The client does not support sampling"
        answered = await sampler.call_tool("test_sampling", {"prompt": "hello?"})
        assert text_of(answered) == "LLM response: sampled"


async def test_progress_and_logs_reach_the_caller_before_the_result_and_never_the_other_client(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    received: dict[str, list[str]] = {"alice": [], "bob": []}
    seen_progress: dict[str, list[float]] = {"alice": [], "bob": []}

    def logger_for(name: str) -> Any:
        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            received[name].append(str(params.data))

        return on_log

    async with (
        running_app(config) as proxy,
        connect(proxy.url, logging_callback=logger_for("alice")) as alice,
        connect(proxy.url, logging_callback=logger_for("bob")) as bob,
    ):

        async def chatter(client: Client, name: str) -> None:
            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                assert message is not None
                assert message.startswith(name)
                seen_progress[name].append(progress)

            result = await client.call_tool("state_chatter", {"tag": name, "count": 20}, progress_callback=on_progress)
            # Everything the call caused arrived before its result.
            assert len(received[name]) == 20
            assert seen_progress[name] == [float(step) for step in range(1, 21)]
            assert structured(result) == name

        async with anyio.create_task_group() as tg:
            tg.start_soon(chatter, alice, "alice")
            tg.start_soon(chatter, bob, "bob")

    assert received["alice"] == [f"alice {step}" for step in range(1, 21)]
    assert received["bob"] == [f"bob {step}" for step in range(1, 21)]


async def test_set_level_reaches_only_that_clients_upstream_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"conformance": conformance_upstream()})
    quiet_logs: list[str] = []
    chatty_logs: list[str] = []

    async def quiet_log(params: types.LoggingMessageNotificationParams) -> None:
        quiet_logs.append(str(params.data))

    async def chatty_log(params: types.LoggingMessageNotificationParams) -> None:
        chatty_logs.append(str(params.data))

    async with (
        running_app(config, upstreams=conformance_in_memory()) as proxy,
        connect(proxy.url, logging_callback=quiet_log) as quiet,
        connect(proxy.url, logging_callback=chatty_log) as chatty,
    ):
        await set_log_level(quiet, "error")
        await set_log_level(chatty, "debug")
        await quiet.call_tool("test_tool_with_logging", {})
        await chatty.call_tool("test_tool_with_logging", {})
        assert quiet_logs == []
        assert len(chatty_logs) == 3
        await set_log_level(quiet, "info")
        await quiet.call_tool("test_tool_with_logging", {})
        assert len(quiet_logs) == 3


async def test_a_clients_cancel_reaches_the_upstream_call(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    async with running_app(config) as proxy, connect(proxy.url) as client:
        async with anyio.create_task_group() as tg:
            arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
            tg.start_soon(client.call_tool, "state_sleep", arguments)
            await wait_until(started.exists, what="the upstream to start the call")
            tg.cancel_scope.cancel()  # the SDK client sends notifications/cancelled for the abandoned call
        await wait_until(cancelled.exists, what="the upstream to see the cancellation")
        assert structured(await client.call_tool("state_echo", {"text": "still fine"})) == "still fine"


async def test_a_client_that_disconnects_mid_call_cancels_the_upstream_call(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    headers = {"X-MCPStore-Session": "survives-the-disconnect"}
    async with running_app(config) as proxy:
        async with anyio.create_task_group() as tg:

            async def call_then_vanish() -> None:
                async with connect(proxy.url, headers=headers) as client:
                    arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
                    await client.call_tool("state_sleep", arguments)

            tg.start_soon(call_then_vanish)
            await wait_until(started.exists, what="the upstream to start the call")
            tg.cancel_scope.cancel()  # leaving `connect` closes the connection and DELETEs the session
        await wait_until(cancelled.exists, what="the upstream to see the cancellation")


async def test_an_upstream_that_cancels_its_sampling_request_cancels_it_at_the_client(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    asked, gave_up = anyio.Event(), anyio.Event()

    async def never_answers(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked.set()
        try:
            await anyio.sleep_forever()
        finally:
            gave_up.set()
        raise AssertionError("unreachable")

    async with running_app(config) as proxy, connect(proxy.url, sampling_callback=never_answers) as client:
        with anyio.fail_after(20):
            with pytest.raises(MCPError, match="timed out"):  # the upstream's own timeout error, passed through
                await client.call_tool("state_ask", {"prompt": "slow?", "timeout_seconds": 0.5})
            await gave_up.wait()
        assert asked.is_set()


async def test_a_session_tool_list_change_reaches_its_owner_only(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    notices: dict[str, int] = {"alice": 0, "bob": 0}

    def counter(name: str) -> Any:
        async def on_message(message: object) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                notices[name] += 1

        return on_message

    async with (
        running_app(config) as proxy,
        connect(proxy.url, message_handler=counter("alice")) as alice,
        connect(proxy.url, message_handler=counter("bob")) as bob,
    ):
        await bob.call_tool("state_echo", {"text": "bob has a session too"})
        assert structured(await alice.call_tool("state_grow", {"name": "sprout"})) == "grew sprout"
        await wait_until(lambda: notices["alice"] == 1, what="alice's tools/list_changed")
        assert "state_sprout" in {t.name for t in (await alice.list_tools()).tools}
        assert text_of(await alice.call_tool("state_sprout", {})) == "I am sprout"
        assert "state_sprout" not in {t.name for t in (await bob.list_tools()).tools}
        with pytest.raises(MCPError):
            await bob.call_tool("state_sprout", {})
        assert notices["bob"] == 0


async def test_a_shared_upstreams_tool_list_change_reaches_everyone(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", session="shared")})
    notices: dict[str, int] = {"alice": 0, "bob": 0}

    def counter(name: str) -> Any:
        async def on_message(message: object) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                notices[name] += 1

        return on_message

    async with (
        running_app(config) as proxy,
        connect(proxy.url, message_handler=counter("alice")) as alice,
        connect(proxy.url, message_handler=counter("bob")) as bob,
    ):
        await alice.call_tool("state_grow", {"name": "for_all"})
        await wait_until(lambda: notices["alice"] >= 1 and notices["bob"] >= 1, what="both clients' notices")
        assert "state_for_all" in {t.name for t in (await bob.list_tools()).tools}
        assert text_of(await bob.call_tool("state_for_all", {})) == "I am for_all"


@pytest.mark.parametrize("fail", [False, True])
async def test_results_arrive_exactly_as_the_upstream_sent_them(tmp_path: Path, fail: bool) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with Client(build(parse(["--name", "state"]), ProcessHost()), mode="legacy") as direct:
        expected = (await direct.call_tool("rich", {"fail": fail})).model_dump(by_alias=True, exclude_none=True)
    async with running_app(config) as proxy, connect(proxy.url) as client:
        proxied = (await client.call_tool("state_rich", {"fail": fail})).model_dump(by_alias=True, exclude_none=True)
    assert proxied == expected
    assert proxied["_meta"] == {"example.com/trace": "abc", "example.com/cost": 3}
    assert proxied["isError"] is fail


@pytest.mark.parametrize(
    ("kind", "notice", "listed"),
    [
        ("prompt", types.PromptListChangedNotification, "prompts"),
        ("resource", types.ResourceListChangedNotification, "resources"),
    ],
)
async def test_a_session_prompt_or_resource_list_change_reaches_its_owner_only(
    tmp_path: Path, kind: str, notice: type[types.ServerNotification], listed: str
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    notices: dict[str, int] = {"alice": 0, "bob": 0}

    def counter(name: str) -> Any:
        async def on_message(message: object) -> None:
            if isinstance(message, notice):
                notices[name] += 1

        return on_message

    async def names(client: Client) -> set[str]:
        if listed == "prompts":
            return {p.name for p in (await client.list_prompts()).prompts}
        return {r.uri for r in (await client.list_resources()).resources}

    expected = "state_extra" if kind == "prompt" else "grown://extra"
    async with (
        running_app(config) as proxy,
        connect(proxy.url, message_handler=counter("alice")) as alice,
        connect(proxy.url, message_handler=counter("bob")) as bob,
    ):
        await bob.call_tool("state_echo", {"text": "bob has a session too"})
        await alice.call_tool("state_grow", {"name": "extra", "kind": kind})
        await wait_until(lambda: notices["alice"] == 1, what=f"alice's {listed}/list_changed")
        assert expected in await names(alice)
        assert expected not in await names(bob)
        assert notices["bob"] == 0


async def test_a_shared_upstream_asks_the_client_whose_call_is_in_flight(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", session="shared")})
    async with (
        running_app(config) as proxy,
        connect(proxy.url, sampling_callback=answering("alice's model")) as alice,
        connect(proxy.url, sampling_callback=answering("bob's model")) as bob,
    ):
        assert structured(await alice.call_tool("state_ask", {"prompt": "who?"})) == "alice's model"
        assert structured(await bob.call_tool("state_ask", {"prompt": "who?"})) == "bob's model"
        assert structured(await alice.call_tool("state_ask", {"prompt": "who?"})) == "alice's model"
