"""The stdio lane: once the stdio client's handshake is done, its `tools/call`s and listings are served without the
SDK's server stack, and lose nothing: ids, errors as the SDK gives them, progress and log entries before the
result, questions to the client and their answers, cancellation (never answered, as the SDK never answers a
request its client cancelled), concurrent calls, 10 MB each way; and what is not the lane's reaches the SDK.

In process: the proxy serves one client over two OS pipes (`tests.pipe_session`), its upstream the stateful
fixture in memory; the client is raw JSON lines, to see the wire, or the SDK's own `Client`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import types
from mcp.client.context import ClientRequestContext
from pydantic import FileUrl

from tests import modern_requests as modern
from tests.conversation import answering_sampling, chatter_until_answered, chattered, structured
from tests.pipe_session import RawPipe, piped_proxy, sdk_client, tool_call
from tests.support import fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

SIZE = 10 * 1024 * 1024
MODERN = modern.MODERN


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state")})


async def test_calls_and_listings_after_the_handshake_take_the_lane_and_keep_the_pipes_session(config: Path) -> None:
    async with piped_proxy(config) as pipes, sdk_client(pipes) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"state_remember", "state_recall", "state_whoami"} <= tools
        await client.call_tool("state_remember", {"value": "one"})
        await client.call_tool("state_remember", {"value": "two"})
        assert structured(await client.call_tool("state_recall", {})) == ["one", "two"]
        whoami = structured(await client.call_tool("state_whoami", {}))
        assert structured(await client.call_tool("state_whoami", {})) == whoami
        assert (pipes.lane.calls_served, pipes.lane.listings_served) == (5, 1)


async def test_ids_of_every_kind_come_back_on_the_lanes_answers(config: Path) -> None:
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        await raw.handshake()
        for request_id in (7, "seven", 2**70, -1):
            answer = await raw.request(request_id, "tools/call", {"name": "state_echo", "arguments": {"text": "hi"}})
            assert answer["id"] == request_id
            assert answer["result"]["structuredContent"] == {"result": "hi"}
        listed = await raw.request("list", "tools/list")
        assert listed["id"] == "list"
        assert "state_echo" in {tool["name"] for tool in listed["result"]["tools"]}
        assert (pipes.lane.calls_served, pipes.lane.listings_served) == (4, 1)


async def test_the_lanes_answers_equal_the_sdks_for_results_errors_and_listings(config: Path) -> None:
    messages: list[dict[str, Any]] = [
        tool_call(1, "state_echo", {"text": "same"}),
        tool_call(2, "state_rich", {"fail": True}),
        tool_call(3, "nowhere_tool", {}),
        tool_call(4, "state_echo", {}),
        tool_call(5, "state_echo", {"text": 1}),
        {"jsonrpc": "2.0", "id": 6, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 7, "method": "prompts/list", "params": {}},
        {"jsonrpc": "2.0", "id": 8, "method": "resources/list"},
        {"jsonrpc": "2.0", "id": 9, "method": "resources/templates/list"},
    ]
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        await raw.handshake(initialized=False)  # the connection is adopted by its first request, the SDK's
        first = await raw.request(0, "ping")
        assert first == {"jsonrpc": "2.0", "id": 0, "result": {}}
        assert pipes.lane.calls_served == 0
        in_lane: list[list[dict[str, Any]]] = []
        for message in messages:
            await raw.write(message)
            in_lane.append(await _until_answered(raw))
        assert (pipes.lane.calls_served, pipes.lane.listings_served) == (5, 4)
    assert in_lane == await _sdks_answers(config, messages)


async def test_malformed_calls_and_other_requests_reach_the_sdk(config: Path) -> None:
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        await raw.handshake()
        nameless = await raw.request(1, "tools/call", {"arguments": {}})
        assert nameless["error"]["code"] == types.INVALID_PARAMS
        listless = await raw.request(2, "tools/call", {"name": "state_echo", "arguments": ["not", "an", "object"]})
        assert listless["error"]["code"] == types.INVALID_PARAMS
        assert await raw.request(3, "ping") == {"jsonrpc": "2.0", "id": 3, "result": {}}
        assert pipes.lane.calls_served == 0
        await raw.write({"jsonrpc": "2.0", "id": 5, "method": "tools/call"}, tool_call(6, "state_echo", {"text": "x"}))
        assert [(await raw.next_message())["id"] for _ in range(2)] == [5, 6]
        assert pipes.lane.calls_served == 1


async def test_progress_and_log_entries_come_before_the_result_in_order(config: Path) -> None:
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        await raw.handshake()
        await raw.request(1, "logging/setLevel", {"level": "info"})
        await raw.write(tool_call(2, "state_chatter", {"tag": "t", "count": 3}, _meta={"progressToken": "p"}))
        seen, answer = await chatter_until_answered(raw.next_message)
        assert answer["result"]["structuredContent"] == {"result": "t"}
        assert seen == chattered("t", 3)
        assert pipes.lane.calls_served == 1


async def test_a_cancelled_call_is_cancelled_upstream_and_never_answered(config: Path, tmp_path: Path) -> None:
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        await raw.handshake()
        arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
        await raw.write(tool_call(1, "state_sleep", arguments))
        await wait_until(started.exists, what="the call to reach its upstream")
        await raw.write({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
        await wait_until(cancelled.exists, what="the upstream to see the call cancelled")
        assert await raw.request(2, "ping") == {"jsonrpc": "2.0", "id": 2, "result": {}}
        echoed = await raw.request(3, "tools/call", {"name": "state_echo", "arguments": {"text": "after"}})
        assert (echoed["id"], echoed["result"]["structuredContent"]) == (3, {"result": "after"})


async def test_a_call_cancelled_in_the_same_read_as_it_came_is_never_answered(config: Path) -> None:
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        await raw.handshake()
        await raw.write(
            tool_call(1, "state_echo", {"text": "withdrawn"}),
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
            tool_call(2, "state_echo", {"text": "kept"}),
        )
        kept = await raw.next_message()
        assert (kept["id"], kept["result"]["structuredContent"]) == (2, {"result": "kept"})
        assert await raw.request(3, "ping") == {"jsonrpc": "2.0", "id": 3, "result": {}}


async def test_the_upstreams_questions_reach_the_client_during_a_call_and_its_answers_come_back(
    config: Path,
) -> None:
    asked: list[str] = []
    sampling = answering_sampling(asked)

    async def roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///work/here"))])

    async with (
        piped_proxy(config) as pipes,
        sdk_client(pipes, sampling_callback=sampling, list_roots_callback=roots) as client,
    ):
        assert structured(await client.call_tool("state_ask", {"prompt": "the answer?"})) == "forty-two"
        assert structured(await client.call_tool("state_roots", {})) == ["file:///work/here"]
        assert asked == ["the answer?"]
        assert pipes.lane.calls_served == 2


async def test_concurrent_calls_on_the_pipe_each_get_their_own_answer(config: Path) -> None:
    async with piped_proxy(config) as pipes, sdk_client(pipes) as client:
        answers: dict[int, Any] = {}

        async def call(index: int) -> None:
            answers[index] = structured(await client.call_tool("state_echo", {"text": f"call {index}"}))

        async with anyio.create_task_group() as tg:
            for index in range(16):
                tg.start_soon(call, index)
        assert answers == {index: f"call {index}" for index in range(16)}
        assert pipes.lane.calls_served == 16


async def test_ten_megabytes_each_way_pass_intact(config: Path) -> None:
    text = "0123456789abcdef" * (SIZE // 16)
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        await raw.handshake()
        answer = await raw.request(1, "tools/call", {"name": "state_echo", "arguments": {"text": text}})
        assert answer["result"]["structuredContent"]["result"] == text
        assert pipes.lane.calls_served == 1


async def test_a_2026_clients_calls_and_listings_take_the_lane_and_keep_the_pipes_session(config: Path) -> None:
    async with piped_proxy(config) as pipes, sdk_client(pipes, mode="auto") as client:
        assert client.protocol_version == MODERN
        await client.call_tool("state_remember", {"value": "kept"})
        assert structured(await client.call_tool("state_recall", {})) == ["kept"]
        assert "state_echo" in {tool.name for tool in (await client.list_tools()).tools}
        assert pipes.lane.calls_served == 2
        assert pipes.lane.listings_served >= 1


async def test_a_2026_clients_answers_in_the_lane_equal_the_sdks(config: Path) -> None:
    requests: list[dict[str, Any]] = [
        {"method": "tools/call", "params": modern.call("state_echo", {"text": "same"})},
        {"method": "tools/call", "params": modern.call("state_rich", {})},
        {"method": "tools/call", "params": modern.call("state_rich", {"fail": True})},
        {"method": "tools/call", "params": modern.call("nowhere_tool", {})},
        {"method": "tools/call", "params": modern.call("state_echo", {})},
        {"method": "tools/call", "params": modern.call("state_chatter", {"tag": "t", "count": 2}, progressToken=9)},
        {"method": "tools/list", "params": {"_meta": modern.envelope()}},
        {"method": "prompts/list", "params": {"_meta": modern.envelope()}},
        {"method": "resources/list", "params": {"_meta": modern.envelope()}},
        {"method": "resources/templates/list", "params": {"_meta": modern.envelope()}},
    ]
    messages = [{"jsonrpc": "2.0", "id": index, **request} for index, request in enumerate(requests, start=1)]
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        assert "result" in await raw.request(0, "tools/list", {"_meta": modern.envelope()})  # the SDK's: the era
        assert pipes.lane.listings_served == 0
        in_lane: list[list[dict[str, Any]]] = []
        for message in messages:
            await raw.write(message)
            in_lane.append(await _until_answered(raw))
        assert (pipes.lane.calls_served, pipes.lane.listings_served) == (6, 4)
    assert in_lane == await _sdks_answers(config, messages, opening=modern.envelope())


async def test_requests_the_2026_lane_leaves_are_answered_by_the_sdk(config: Path) -> None:
    asking = modern.call("state_echo", {"text": "x"}, capabilities={"sampling": {}})
    async with piped_proxy(config) as pipes:
        raw = RawPipe(pipes)
        assert "result" in await raw.request(0, "tools/list", {"_meta": modern.envelope()})
        declared = await raw.request(1, "tools/call", asking)  # a client that may be asked: the SDK's rounds
        assert declared["result"]["structuredContent"] == {"result": "x"}
        cursor = await raw.request(2, "tools/list", {"cursor": "c", "_meta": modern.envelope()})
        assert cursor["id"] == 2
        old = await raw.request(3, "tools/call", modern.call("state_echo", {"text": "x"}) | {"_meta": {}})
        assert old["error"]["code"] == types.INVALID_PARAMS
        initialize = await raw.request(4, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        assert initialize["error"]["code"] == types.UNSUPPORTED_PROTOCOL_VERSION
        assert (pipes.lane.calls_served, pipes.lane.listings_served) == (0, 0)


async def _until_answered(raw: RawPipe) -> list[dict[str, Any]]:
    """The messages up to and including the next answer."""
    seen = [await raw.next_message()]
    while "id" not in seen[-1]:
        seen.append(await raw.next_message())
    return seen


async def _sdks_answers(
    config: Path, messages: list[dict[str, Any]], *, opening: dict[str, Any] | None = None
) -> list[list[dict[str, Any]]]:
    """What the SDK sends for each of `messages`, in turn, over a pipe with no lane: after the handshake, or
    (given the 2026-07-28 envelope `opening`) after a first listing that opens that era."""
    async with piped_proxy(config, lane=False) as pipes:
        raw = RawPipe(pipes)
        if opening is None:
            await raw.handshake()
        else:
            assert "result" in await raw.request(0, "tools/list", {"_meta": opening})
        answers: list[list[dict[str, Any]]] = []
        for message in messages:
            await raw.write(message)
            answers.append(await _until_answered(raw))
        assert (pipes.lane.calls_served, pipes.lane.listings_served) == (0, 0)
        return answers


async def test_a_session_named_by_argument_keeps_its_own_state_apart_from_the_pipes(config: Path) -> None:
    async with piped_proxy(config) as pipes, sdk_client(pipes) as client:
        await client.call_tool("state_remember", {"value": "named", "session_id": "work"})
        await client.call_tool("state_remember", {"value": "piped"})
        assert structured(await client.call_tool("state_recall", {"session_id": "work"})) == ["named"]
        assert structured(await client.call_tool("state_recall", {})) == ["piped"]
        assert pipes.lane.calls_served == 4
