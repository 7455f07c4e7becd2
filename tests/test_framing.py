"""A Streamable HTTP request is answered in plain JSON when the upstream's first message for it is its answer, and
over an event stream when something comes first (progress, a log entry, a request to the client).

The proxy runs in this process (`running_app`) with the stateful fixture upstream in memory; raw HTTP requests show
the framing, the SDK client shows that everything still arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError, types

from mcpstore_proxy.framing import FirstEventResponse
from tests.conversation import structured, text_of
from tests.inprocess import running_app
from tests.memory import one_tool_upstream
from tests.raw_session import EVENT_STREAM, JSON, RawSession, events_of, lane_calls, media_type, opened_session
from tests.support import connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state")})


async def test_a_plain_call_and_a_tool_list_are_answered_as_json_with_their_ids(config: Path) -> None:
    async with opened_session(config) as (_proxy, _http, session):
        called = await session.call_tool(7, "state_echo", {"text": "hi"})
        assert (called.status_code, media_type(called)) == (200, JSON)
        assert called.json()["id"] == 7
        assert called.json()["result"]["structuredContent"] == {"result": "hi"}
        assert called.headers["mcp-session-id"] == session.headers["Mcp-Session-Id"]
        listed = await session.post({"jsonrpc": "2.0", "id": "list-1", "method": "tools/list"})
        assert (listed.status_code, media_type(listed)) == (200, JSON)
        assert listed.json()["id"] == "list-1"
        assert "state_echo" in {tool["name"] for tool in listed.json()["result"]["tools"]}


async def test_a_call_whose_upstream_reports_progress_first_is_streamed_with_progress_before_the_result(
    config: Path,
) -> None:
    async with opened_session(config) as (proxy, _http, session):
        answer = await session.call_tool(3, "state_chatter", {"tag": "t", "count": 3}, progressToken="p")
        assert (answer.status_code, media_type(answer)) == (200, EVENT_STREAM)
        messages = events_of(answer)
        assert [message.get("method") for message in messages[:-1]] == [
            "notifications/message",
            "notifications/progress",
        ] * 3
        assert [message["params"]["progress"] for message in messages if "progress" in message.get("params", {})] == [
            1,
            2,
            3,
        ]
        assert messages[-1]["id"] == 3
        assert messages[-1]["result"]["structuredContent"] == {"result": "t"}
        assert await lane_calls(proxy, config) == 1


async def test_a_post_that_does_not_accept_json_is_refused_and_never_answered_in_json(config: Path) -> None:
    async with opened_session(config) as (_proxy, _http, session):
        session.headers["Accept"] = EVENT_STREAM
        refused = await session.call_tool(4, "state_echo", {"text": "streamed"})
        # The SDK refuses it before any framing; the response class would keep it on an event stream regardless.
        assert refused.status_code == 406
        session.headers["Accept"] = f"{JSON}, {EVENT_STREAM}"
        assert media_type(await session.call_tool(5, "state_echo", {"text": "json"})) == JSON


async def test_an_upstream_that_asks_the_client_first_is_answered_through_the_sdk_client(config: Path) -> None:
    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled"), model="test-model"
        )

    async with running_app(config) as proxy, connect(proxy.url, sampling_callback=sampling) as client:
        assert structured(await client.call_tool("state_ask", {"prompt": "hello?"})) == "sampled"
        assert structured(await client.call_tool("state_echo", {"text": "after"})) == "after"


async def test_an_unknown_tool_and_a_failing_tool_are_answered_as_json_with_their_ids(config: Path) -> None:
    async with opened_session(config) as (_proxy, _http, session):
        unknown = await session.call_tool(11, "state_no_such_tool", {})
        assert (unknown.status_code, media_type(unknown)) == (200, JSON)
        body = unknown.json()
        assert body["id"] == 11
        assert "error" in body or body["result"]["isError"] is True
        failing = await session.call_tool(12, "state_rich", {"fail": True})
        assert (failing.status_code, media_type(failing)) == (200, JSON)
        assert failing.json()["id"] == 12
        assert failing.json()["result"]["isError"] is True


async def test_an_unknown_method_is_answered_as_a_json_rpc_error_in_json(config: Path) -> None:
    async with opened_session(config) as (_proxy, _http, session):
        answer = await session.post({"jsonrpc": "2.0", "id": 21, "method": "no/such/method"})
        assert (answer.status_code, media_type(answer)) == (200, JSON)
        assert answer.json()["id"] == 21
        assert answer.json()["error"]["code"] == types.METHOD_NOT_FOUND


TEN_MEGABYTES = "0123456789abcdef" * (10 * 1024 * 1024 // 16)


async def test_a_ten_megabyte_result_arrives_intact_as_json(tmp_path: Path) -> None:
    # The answer only: a request that large would be refused.
    big = types.CallToolResult(content=[types.TextContent(type="text", text=TEN_MEGABYTES)])
    config, upstreams = one_tool_upstream(tmp_path, "big", big)
    async with running_app(config, upstreams=upstreams) as proxy, httpx2.AsyncClient(timeout=60) as http:
        session = RawSession(http, proxy.url)
        await session.open()
        answer = await session.call_tool(5, "big", {})
        assert (answer.status_code, media_type(answer)) == (200, JSON)
        assert int(answer.headers["content-length"]) == len(answer.content)
        assert answer.json()["id"] == 5
        assert answer.json()["result"]["content"][0]["text"] == TEN_MEGABYTES
        assert await lane_calls(proxy, config) == 1
        async with connect(proxy.url) as client:
            assert text_of(await client.call_tool("big", {})) == TEN_MEGABYTES


async def test_concurrent_calls_on_one_session_each_get_their_own_answer(config: Path) -> None:
    answers: dict[int, httpx2.Response] = {}
    async with opened_session(config) as (proxy, _http, session):

        async def call(request_id: int) -> None:
            answers[request_id] = await session.call_tool(request_id, "state_echo", {"text": f"call {request_id}"})

        async with anyio.create_task_group() as tg:
            for request_id in range(1, 17):
                tg.start_soon(call, request_id)
        assert await lane_calls(proxy, config) == 16
    for request_id, answer in answers.items():
        assert media_type(answer) == JSON
        assert answer.json()["id"] == request_id
        assert answer.json()["result"]["structuredContent"] == {"result": f"call {request_id}"}
    assert len(answers) == 16


async def test_the_sdk_client_reads_json_answers_and_errors(config: Path) -> None:
    async with running_app(config) as proxy, connect(proxy.url) as client:
        assert structured(await client.call_tool("state_echo", {"text": "sdk"})) == "sdk"
        assert (await client.call_tool("state_rich", {"fail": True})).is_error
        with pytest.raises(MCPError):
            await client.read_resource("state://no/such/resource")
        assert text_of(await client.call_tool("state_echo", {"text": "still"})) == "still"


async def test_a_client_that_hangs_up_while_waiting_for_a_json_answer_cancels_the_upstream_call(
    config: Path, tmp_path: Path
) -> None:
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    async with opened_session(config) as (proxy, _http, session):
        async with anyio.create_task_group() as tg:

            async def call_then_hang_up() -> None:
                # A connection of its own, closed with the cancelled request; the session is not deleted.
                async with httpx2.AsyncClient(timeout=60) as caller:
                    arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
                    params = {"name": "state_sleep", "arguments": arguments}
                    call = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": params}
                    await caller.post(proxy.url, json=call, headers=session.headers)

            tg.start_soon(call_then_hang_up)
            await wait_until(started.exists, what="the upstream to start the call")
            tg.cancel_scope.cancel()
        await wait_until(cancelled.exists, what="the upstream to see the cancellation")
        still = await session.call_tool(9, "state_echo", {"text": "still fine"})
        assert (media_type(still), still.json()["result"]["structuredContent"]) == (JSON, {"result": "still fine"})


async def test_an_sdk_client_that_cancels_a_call_and_leaves_exits_cleanly(config: Path, tmp_path: Path) -> None:
    started = tmp_path / "started"
    async with running_app(config) as proxy:
        async with connect(proxy.url) as client, anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "state_sleep", {"seconds": 60, "started_marker": str(started)})
            await wait_until(started.exists, what="the upstream to start the call")
            tg.cancel_scope.cancel()
        async with connect(proxy.url) as again:
            assert structured(await again.call_tool("state_echo", {"text": "after"})) == "after"


def sdk_event(message: types.JSONRPCMessage) -> dict[str, str]:
    """An event as the SDK's transport writes it for a message."""
    return {"event": "message", "data": message.model_dump_json(by_alias=True, exclude_unset=True)}


RESULT = types.JSONRPCResponse(jsonrpc="2.0", id='odd "id", "error":', result={"content": [], "method": 1})
ERROR = types.JSONRPCError(jsonrpc="2.0", id=7, error=types.ErrorData(code=-32601, message="no"))
CANCELLED = types.JSONRPCError(jsonrpc="2.0", id=8, error=types.ErrorData(code=-32800, message="cancelled"))
PROGRESS = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params={"progress": 1})
ASK = types.JSONRPCRequest(jsonrpc="2.0", id="result", method="sampling/createMessage", params={})


@pytest.mark.parametrize(
    ("first", "expected"),
    [(RESULT, JSON), (ERROR, JSON), (CANCELLED, EVENT_STREAM), (PROGRESS, EVENT_STREAM), (ASK, EVENT_STREAM)],
)
async def test_the_first_message_as_the_sdk_writes_it_decides_the_framing(
    first: types.JSONRPCMessage, expected: str
) -> None:
    async def events() -> AsyncIterator[dict[str, str]]:
        yield sdk_event(first)

    async def sender() -> None:
        pass

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        await anyio.sleep_forever()

    accept = (b"accept", f"{JSON}, {EVENT_STREAM}".encode())
    scope = {"type": "http", "method": "POST", "headers": [accept], "path": "/mcp", "query_string": b""}
    await FirstEventResponse(events(), data_sender_callable=sender)(scope, receive, send)
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"].decode().split(";")[0] == expected
    body = b"".join(message.get("body", b"") for message in sent[1:])
    assert sdk_event(first)["data"].encode() in body
