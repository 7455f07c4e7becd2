"""The fast lane: an in-session handshake-era `tools/call` is served without the SDK's server stack, and loses
nothing on the way: ids, framing, questions to the client and their answers, cancellation, errors, large numbers,
and every refusal the SDK would give (404 for another principal's session, 421, 403, 413, malformed calls).

In process (`running_app`, the stateful fixture upstream in memory), with plain HTTP to see what the wire carries;
`/admin/status`'s `fast_lane_calls` says which requests took the lane. Listings in the lane are in
`test_lane_listings`, the session's standing stream in `test_lane_stream`, 2026-07-28 calls in `test_lane_modern`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import types

from tests.inprocess import running_app
from tests.memory import one_tool_upstream
from tests.raw_session import (
    ALICE,
    BOB,
    EVENT_STREAM,
    JSON,
    RawSession,
    events_of,
    guarded_config,
    lane_calls,
    media_type,
    next_message,
    opened_session,
    tool_call,
)
from tests.support import fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state")})


async def test_a_call_in_an_open_session_takes_the_lane_and_is_answered_in_json_with_its_id(config: Path) -> None:
    async with opened_session(config) as (proxy, _http, session):
        assert await lane_calls(proxy, config) == 0
        for request_id in (7, "seven"):
            called = await session.post(tool_call(request_id, "state_echo", {"text": f"hi {request_id}"}))
            assert (called.status_code, media_type(called)) == (200, JSON)
            assert called.json() == {
                "jsonrpc": "2.0",
                "id": request_id,
                "result": called.json()["result"],
            }
            assert called.json()["result"]["structuredContent"] == {"result": f"hi {request_id}"}
            assert called.headers["mcp-session-id"] == session.headers["Mcp-Session-Id"]
        remembered = await session.call_tool(8, "state_remember", {"value": "kept"})
        assert remembered.status_code == 200
        recalled = await session.call_tool(9, "state_recall", {})
        assert recalled.json()["result"]["structuredContent"]["result"] == ["kept"]
        assert await lane_calls(proxy, config) == 4


async def test_what_the_lane_does_not_serve_reaches_the_sdk_unchanged(config: Path) -> None:
    async with opened_session(config) as (proxy, http, session):
        nameless = await session.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"arguments": {}}})
        assert (nameless.json()["id"], nameless.json()["error"]["code"]) == (2, types.INVALID_PARAMS)
        unparsable = await http.post(proxy.url, content=b"{not json", headers=session.headers)
        assert unparsable.status_code == 400
        assert unparsable.json()["error"]["code"] == types.PARSE_ERROR
        batch = await session.post([tool_call(3, "state_echo", {"text": "in a batch"})])
        assert batch.status_code == 400
        ping = await session.post({"jsonrpc": "2.0", "id": 4, "method": "ping"})
        assert ping.json() == {"jsonrpc": "2.0", "id": 4, "result": {}}
        assert await lane_calls(proxy, config) == 0
        assert (await session.call_tool(5, "state_echo", {"text": "lane"})).status_code == 200
        assert (await session.post({"jsonrpc": "2.0", "id": 6, "method": "tools/list"})).status_code == 200
        assert await lane_calls(proxy, config) == 2


async def test_a_call_whose_id_or_fields_are_not_well_typed_is_left_to_the_sdk(config: Path) -> None:
    malformed: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": True, "method": "tools/call", "params": {"name": "state_echo"}},
        {"jsonrpc": "2.0", "id": 1.5, "method": "tools/call", "params": {"name": "state_echo"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": 7}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "state_echo", "arguments": []}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "state_echo", "_meta": []}},
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {"name": "state_echo", "arguments": {"text": "x"}, "_meta": {"progressToken": False}},
        },
    ]
    async with opened_session(config) as (proxy, _http, session):
        for message in malformed:
            answered = await session.post(message)
            assert answered.status_code < 500, message  # whatever the SDK makes of it, as it would without us
        assert await lane_calls(proxy, config) == 0

        called = await session.call_tool(6, "state_echo", {"text": "well formed"})

        assert called.json()["result"]["structuredContent"] == {"result": "well formed"}
        assert await lane_calls(proxy, config) == 1


async def test_a_call_with_its_session_id_or_protocol_version_sent_twice_is_left_to_the_sdk(config: Path) -> None:
    async with opened_session(config) as (proxy, http, session):
        for repeated in ("Mcp-Session-Id", "Mcp-Protocol-Version"):
            headers = [*session.headers.items(), (repeated, session.headers[repeated])]
            answered = await http.post(proxy.url, json=tool_call(1, "state_echo", {"text": "x"}), headers=headers)
            assert answered.status_code < 500, answered.text  # whatever the SDK makes of it
        assert await lane_calls(proxy, config) == 0

        assert (await session.call_tool(2, "state_echo", {"text": "once"})).status_code == 200
        assert await lane_calls(proxy, config) == 1


async def test_a_call_right_after_initialize_takes_the_lane_before_the_initialized_notice(config: Path) -> None:
    async with running_app(config) as proxy, httpx2.AsyncClient(timeout=30) as http:
        session = RawSession(http, proxy.url)
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        opened = await session.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        session.headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        session.headers["Mcp-Protocol-Version"] = "2025-11-25"
        early = await session.call_tool(1, "state_echo", {"text": "early"})
        assert early.json()["result"]["structuredContent"] == {"result": "early"}
        assert await lane_calls(proxy, config) == 1


async def test_an_upstreams_question_goes_out_on_the_calls_stream_and_the_clients_answer_comes_back(
    config: Path,
) -> None:
    async with running_app(config) as proxy, httpx2.AsyncClient(timeout=30) as http:
        session = RawSession(http, proxy.url)
        await session.open({"sampling": {}})
        call = tool_call(5, "state_ask", {"prompt": "hello?"})
        async with http.stream("POST", proxy.url, json=call, headers=session.headers) as answer:
            assert answer.headers["content-type"] == EVENT_STREAM
            lines = answer.aiter_lines()
            question = await next_message(lines)
            assert question["method"] == "sampling/createMessage"
            assert question["params"]["messages"][0]["content"]["text"] == "hello?"
            sampled = {"role": "assistant", "content": {"type": "text", "text": "sampled"}, "model": "test-model"}
            reply = {"jsonrpc": "2.0", "id": question["id"], "result": sampled}
            accepted = await session.post(reply)
            assert accepted.status_code == 202
            final = await next_message(lines)
        assert final["id"] == 5
        assert final["result"]["structuredContent"] == {"result": "sampled"}
        assert await lane_calls(proxy, config) == 1


async def test_a_client_that_refuses_the_question_has_its_error_reach_the_upstream(config: Path) -> None:
    async with running_app(config) as proxy, httpx2.AsyncClient(timeout=30) as http:
        session = RawSession(http, proxy.url)
        await session.open({"sampling": {}})
        call = tool_call(6, "state_ask", {"prompt": "hello?"})
        async with http.stream("POST", proxy.url, json=call, headers=session.headers) as answer:
            lines = answer.aiter_lines()
            question = await next_message(lines)
            refusal = {"jsonrpc": "2.0", "id": question["id"], "error": {"code": -1, "message": "user said no"}}
            assert (await session.post(refusal)).status_code == 202
            final = await next_message(lines)
        # The fixture's tool lets the client's error out, as a JSON-RPC error of its own.
        assert (final["id"], final["error"]) == (6, {"code": -1, "message": "user said no"})


async def test_a_question_the_upstream_withdraws_is_withdrawn_from_the_client_before_the_answer(config: Path) -> None:
    async with running_app(config) as proxy, httpx2.AsyncClient(timeout=30) as http:
        session = RawSession(http, proxy.url)
        await session.open({"sampling": {}})
        call = tool_call(7, "state_ask", {"prompt": "slow?", "timeout_seconds": 0.5})
        async with http.stream("POST", proxy.url, json=call, headers=session.headers) as answer:
            lines = answer.aiter_lines()
            question = await next_message(lines)
            withdrawn = await next_message(lines)  # never answered: the upstream gives up after 0.5 s
            final = await next_message(lines)
        assert withdrawn["method"] == "notifications/cancelled"
        assert withdrawn["params"]["requestId"] == question["id"]
        assert final["id"] == 7
        assert "timed out" in json.dumps(final)


async def test_another_session_can_neither_answer_a_sessions_question_nor_cancel_its_call(config: Path) -> None:
    async with running_app(config) as proxy, httpx2.AsyncClient(timeout=30) as http:
        owner, other = RawSession(http, proxy.url), RawSession(http, proxy.url)
        await owner.open({"sampling": {}})
        await other.open({"sampling": {}})
        call = tool_call(5, "state_ask", {"prompt": "whose?"})
        async with http.stream("POST", proxy.url, json=call, headers=owner.headers) as answer:
            lines = answer.aiter_lines()
            question = await next_message(lines)
            forged = {"role": "assistant", "content": {"type": "text", "text": "forged"}, "model": "m"}
            await other.post({"jsonrpc": "2.0", "id": question["id"], "result": forged})
            await other.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}})
            genuine = {"role": "assistant", "content": {"type": "text", "text": "genuine"}, "model": "m"}
            assert (await owner.post({"jsonrpc": "2.0", "id": question["id"], "result": genuine})).status_code == 202
            final = await next_message(lines)
        assert (final["id"], final["result"]["structuredContent"]) == (5, {"result": "genuine"})


async def test_a_cancelled_call_is_cancelled_upstream_and_answered_on_its_stream(config: Path, tmp_path: Path) -> None:
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    async with opened_session(config) as (_proxy, _http, session):
        answers: list[httpx2.Response] = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
                answers.append(await session.call_tool(11, "state_sleep", arguments))

            tg.start_soon(call)
            await wait_until(started.exists, what="the upstream to start the call")
            other = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}
            assert (await session.post(other)).status_code == 202  # not ours: the SDK's, which ignores it
            assert not answers
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 11}}
            assert (await session.post(cancel)).status_code == 202
        await wait_until(cancelled.exists, what="the upstream to see the cancellation")
        [answer] = answers
        # A stream, not JSON: the client stopped reading when it cancelled, and the SDK's Python client raises on a
        # JSON body for such a request.
        assert media_type(answer) == EVENT_STREAM
        assert [(event["id"], event["error"]["code"]) for event in events_of(answer)] == [(11, -32800)]
        still = await session.call_tool(12, "state_echo", {"text": "still fine"})
        assert still.json()["result"]["structuredContent"] == {"result": "still fine"}


async def test_a_number_past_64_bits_arrives_intact(tmp_path: Path) -> None:
    answer_of_count = types.CallToolResult(content=[], structured_content={"n": 2**70, "small": 1})
    config, upstreams = one_tool_upstream(tmp_path, "count", answer_of_count)
    async with running_app(config, upstreams=upstreams) as proxy, httpx2.AsyncClient(timeout=30) as http:
        session = RawSession(http, proxy.url)
        await session.open()
        answer = await session.call_tool(1, "count", {})
        assert answer.json()["result"]["structuredContent"] == {"n": 2**70, "small": 1}
        assert await lane_calls(proxy, config) == 1


async def test_a_number_past_64_bits_in_a_calls_arguments_reaches_the_upstream_intact(tmp_path: Path) -> None:
    def reflect(params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[], structured_content={"got": params.arguments})

    config, upstreams = one_tool_upstream(tmp_path, "reflect", reflect)
    async with running_app(config, upstreams=upstreams) as proxy, httpx2.AsyncClient(timeout=30) as http:
        session = RawSession(http, proxy.url)
        await session.open()
        answer = await session.call_tool(1, "reflect", {"n": 2**70 + 1, "small": 1, "x": 0.5})
        assert answer.json()["result"]["structuredContent"] == {"got": {"n": 2**70 + 1, "small": 1, "x": 0.5}}
        assert await lane_calls(proxy, config) == 1


@pytest.fixture
def guarded(tmp_path: Path) -> Path:
    return guarded_config(tmp_path)


async def test_another_principal_cannot_call_in_a_session_it_did_not_open(guarded: Path) -> None:
    async with running_app(guarded) as proxy, httpx2.AsyncClient(timeout=30) as http:
        alice = RawSession(http, proxy.url)
        alice.headers["Authorization"] = f"Bearer {ALICE}"
        await alice.open()
        assert (await alice.call_tool(1, "state_remember", {"value": "alice's"})).status_code == 200
        bobs_try = await alice.post(tool_call(2, "state_recall", {}), Authorization=f"Bearer {BOB}")
        unknown = await alice.post(
            tool_call(2, "state_recall", {}), Authorization=f"Bearer {BOB}", **{"Mcp-Session-Id": "0" * 32}
        )
        assert (bobs_try.status_code, bobs_try.text) == (404, unknown.text)
        anonymous = await alice.post(tool_call(2, "state_recall", {}), Authorization="")
        assert anonymous.status_code == 401
        assert await lane_calls(proxy, guarded) == 1
        recalled = await alice.call_tool(3, "state_recall", {})
        assert recalled.json()["result"]["structuredContent"]["result"] == ["alice's"]
        assert await lane_calls(proxy, guarded) == 2


async def test_a_call_from_a_foreign_host_or_origin_is_refused_as_the_sdk_refuses_it(config: Path) -> None:
    async with opened_session(config) as (proxy, _http, session):
        call = tool_call(1, "state_echo", {"text": "x"})
        assert (await session.post(call, Host="evil.example")).status_code == 421
        assert (await session.post(call, Origin="http://evil.example")).status_code == 403
        assert (await session.post(call, **{"Content-Type": "text/plain"})).status_code == 400
        assert (await session.post(call, Accept=JSON)).status_code == 406
        assert await lane_calls(proxy, config) == 0
        own_origin = f"http://127.0.0.1:{proxy.port}"
        assert (await session.post(call, Origin=own_origin)).json()["result"]["structuredContent"] == {"result": "x"}
        assert await lane_calls(proxy, config) == 1


async def test_a_call_past_the_size_limit_is_refused_with_413_whether_or_not_it_declares_its_length(
    config: Path,
) -> None:
    oversized = json.dumps(tool_call(1, "state_echo", {"text": "x" * (4 * 1024 * 1024)})).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(oversized), 65536):
            yield oversized[start : start + 65536]

    async with opened_session(config) as (proxy, http, session):
        declared = await http.post(proxy.url, content=oversized, headers=session.headers)
        assert declared.status_code == 413
        undeclared = await http.post(proxy.url, content=chunked(), headers=session.headers)
        assert undeclared.status_code == 413
        fitting = await session.call_tool(2, "state_echo", {"text": "x" * (1024 * 1024)})
        assert fitting.json()["result"]["structuredContent"] == {"result": "x" * (1024 * 1024)}
        assert await lane_calls(proxy, config) == 1
