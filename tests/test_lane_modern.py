"""The fast lane for 2026-07-28 calls: a `tools/call` from a client that declared nothing askable is served without
the SDK's single-exchange stack, and its answer is the SDK's, byte for byte where it matters: status, media type,
result shape, errors. Everything the lane may not judge alone reaches the SDK unchanged.

In process (`running_app`, the stateful fixture upstream in memory), with plain HTTP to see what the wire carries;
`/admin/status`'s `fast_lane_calls` says which requests took the lane. A request carrying an `Mcp-Session-Id`
is never the lane's and the SDK ignores that header for this era: the same call sent with one is the SDK's answer.
The keep-alive comments are checked in memory, on an `Answer` whose `send` is a list.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp_types.methods import serialize_server_result
from starlette.types import Message

from mcpstore_proxy.hangup import HangUpWatch
from mcpstore_proxy.lane_modern import STREAM_HEADERS, is_kept_as_is
from mcpstore_proxy.lane_wire import Answer
from tests.fixtures.conformance_server import ConformanceFixtures
from tests.inprocess import InProcessProxy, running_app
from tests.memory import MemoryUpstreams
from tests.modern_requests import MODERN, TO_THE_SDK, call, envelope, messages, post
from tests.raw_session import lane_calls
from tests.support import CONFORMANCE_SERVER, fixture_server, write_config

pytestmark = pytest.mark.anyio


def conformance() -> Any:
    return ConformanceFixtures().build_server()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state")})


async def both_ways(proxy: InProcessProxy, config: Path, params: Mapping[str, Any]) -> tuple[Any, Any]:
    """The same call answered by the lane and by the SDK: (status, media type, messages) each; the lane took one."""
    before = await lane_calls(proxy, config)
    lane = await post(proxy.url, params)
    assert await lane_calls(proxy, config) == before + 1, "the lane did not take the call"
    sdk = await post(proxy.url, params, **TO_THE_SDK)
    assert await lane_calls(proxy, config) == before + 1, "the lane took the call meant for the SDK"

    def seen(response: httpx2.Response) -> tuple[int, str, list[dict[str, Any]]]:
        return response.status_code, response.headers["content-type"], messages(response)

    return seen(lane), seen(sdk)


@pytest.mark.parametrize(
    "params",
    [
        call("state_echo", {"text": "héllo"}),
        call("state_rich"),
        call("state_rich", {"fail": True}),
        call("state_crash"),
        call("state_no_such_tool", {"x": 1}),
        call("state_echo", {}),
    ],
    ids=["structured", "rich-content", "tool-error", "upstream-failure", "unknown-tool", "invalid-arguments"],
)
async def test_a_2026_call_takes_the_lane_and_is_answered_exactly_as_the_sdk_answers_it(
    config: Path, params: dict[str, Any]
) -> None:
    async with running_app(config) as proxy:
        lane, sdk = await both_ways(proxy, config, params)
    assert lane == sdk


async def test_progress_reaches_the_client_before_the_result_on_an_event_stream_and_log_entries_do_not(
    config: Path,
) -> None:
    params = call("state_chatter", {"tag": "t", "count": 3}, progressToken="p-1")
    async with running_app(config) as proxy:
        lane, sdk = await both_ways(proxy, config, params)
    assert lane == sdk
    status, media_type, sent = lane
    assert (status, media_type) == (200, "text/event-stream")
    assert [m["params"]["progress"] for m in sent[:-1]] == [1, 2, 3]  # no notifications/message: none opted in to
    assert all(m["params"]["progressToken"] == "p-1" for m in sent[:-1])
    assert sent[-1]["result"]["structuredContent"] == {"result": "t"}


async def test_a_session_kept_by_lane_calls_is_the_principals_own_and_a_named_one_is_apart(config: Path) -> None:
    async with running_app(config) as proxy:
        await post(proxy.url, call("state_remember", {"value": "kept"}))
        recalled = (await post(proxy.url, call("state_recall"))).json()["result"]
        named = (await post(proxy.url, call("state_recall"), **{"x-mcpstore-session": "other"})).json()["result"]
        sdk_sees = (await post(proxy.url, call("state_recall"), **TO_THE_SDK)).json()["result"]
        assert await lane_calls(proxy, config) == 3
    assert recalled["structuredContent"] == sdk_sees["structuredContent"] == {"result": ["kept"]}
    assert named["structuredContent"] == {"result": []}


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        (call("state_echo", {"text": "x"}, capabilities={"sampling": {}}), {}),  # may be asked: rounds
        (call("state_chatter", {"tag": "t", "count": 1}, **{"io.modelcontextprotocol/logLevel": "info"}), {}),
        ({**call("state_echo", {"text": "x"}), "requestState": "abc"}, {}),
        (call("state_echo", {"text": "x"}), {"mcp-name": "state_other"}),  # header disagrees with the body
        (call("state_echo", {"text": "x"}), {"mcp-param-text": "x"}),
        ({**call("state_echo", {"text": "x"}), "_meta": {**envelope(), "io.modelcontextprotocol/clientInfo": 7}}, {}),
        ({**call("state_echo", {"text": "x"}), "arguments": "not an object"}, {}),
    ],
    ids=[
        "declares-sampling",
        "opts-in-to-logs",
        "carries-request-state",
        "name-header-mismatch",
        "mcp-param-header",
        "malformed-client-info",
        "malformed-arguments",
    ],
)
async def test_what_the_lane_cannot_judge_alone_is_the_sdks_and_answered_as_it_answers_it(
    config: Path, params: dict[str, Any], headers: dict[str, str]
) -> None:
    async with running_app(config) as proxy:
        # A call the lane takes first: what it remembers of one call must not let another in.
        await post(proxy.url, call("state_echo", {"text": "first"}))
        assert await lane_calls(proxy, config) == 1
        answered = await post(proxy.url, params, **headers)
        reference = await post(proxy.url, params, **headers, **TO_THE_SDK)
        assert await lane_calls(proxy, config) == 1
    assert (answered.status_code, messages(answered)) == (reference.status_code, messages(reference))


async def test_a_tool_that_maps_an_argument_to_a_header_is_the_sdks_and_one_that_does_not_stays_in_the_lane(
    tmp_path: Path,
) -> None:
    # The conformance fixture's test_custom_header maps `region` to Mcp-Param-Region, which this call leaves out:
    # the SDK refuses it, and the lane must not answer instead.
    upstream = {"command": sys.executable, "args": [str(CONFORMANCE_SERVER)], "prefix": ""}
    config = write_config(tmp_path, {"conformance": upstream})
    async with running_app(config, upstreams=MemoryUpstreams(scripts={CONFORMANCE_SERVER: conformance})) as proxy:
        mapped = call("test_custom_header", {"region": "eu"})
        answered = await post(proxy.url, mapped)
        reference = await post(proxy.url, mapped, **TO_THE_SDK)
        assert await lane_calls(proxy, config) == 0
        plain = await post(proxy.url, call("test_simple_text"))
        assert await lane_calls(proxy, config) == 1
    assert (answered.status_code, messages(answered)) == (reference.status_code, messages(reference))
    assert "error" in messages(answered)[-1]
    assert messages(plain)[-1]["result"]["content"][0]["type"] == "text"


async def test_log_entries_opted_in_to_still_reach_the_client_through_the_sdk(config: Path) -> None:
    params = call("state_chatter", {"tag": "t", "count": 2}, **{"io.modelcontextprotocol/logLevel": "info"})
    async with running_app(config) as proxy:
        sent = messages(await post(proxy.url, params))
    assert [m["params"]["data"] for m in sent if m.get("method") == "notifications/message"] == ["t 1", "t 2"]


class _Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = anyio.Event()

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.messages) < count:
                await self._changed.wait()


async def _silent() -> Mapping[str, Any]:
    """A request's connection on which the client says nothing more, and stays."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def test_a_silent_call_becomes_an_event_stream_with_keep_alive_comments_then_its_answer() -> None:
    sent = _Sent()
    answer = Answer(sent.send, None, stream_headers=STREAM_HEADERS)
    with (
        anyio.CancelScope() as call,
        HangUpWatch(_silent, call, keepalive=answer.ping, keepalive_seconds=0.01),
    ):
        await sent.until(3)  # the stream's start and two comments
        await answer.finish({"jsonrpc": "2.0", "id": 1, "result": {}})
    assert not call.cancel_called  # kept alive, not taken for a hang-up
    start, *bodies = sent.messages
    assert (start["status"], start["headers"]) == (200, list(STREAM_HEADERS))
    assert {body["body"] for body in bodies[:-1]} == {b": ping\r\n\r\n"}
    assert bodies[-1]["body"].startswith(b"event: message\r\ndata: ")
    assert not bodies[-1]["more_body"]


async def test_an_answer_within_the_keep_alive_period_is_plain_json_without_comments() -> None:
    sent = _Sent()
    answer = Answer(sent.send, None, stream_headers=STREAM_HEADERS)
    with anyio.CancelScope() as call, HangUpWatch(_silent, call, keepalive=answer.ping, keepalive_seconds=60):
        await answer.finish({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "no"}}, status=400)
    start, body = sent.messages
    assert start["status"] == 400
    assert dict(start["headers"])[b"content-type"] == b"application/json"
    assert json.loads(body["body"])["error"]["code"] == -32602


@pytest.mark.parametrize(
    "result",
    [
        {"content": [{"type": "text", "text": "plain"}], "isError": False},
        {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "ü 😀"}], "isError": True},
        {"content": [], "structuredContent": {"k": None, "nested": {"n": [1, None, 2**70]}}},
        {"content": [{"type": "text", "text": "x"}], "structuredContent": {}},
    ],
)
def test_a_plain_text_result_is_what_the_sdks_surface_makes_of_it(result: dict[str, Any]) -> None:
    shaped = {**result, "resultType": "complete"}
    assert is_kept_as_is(shaped)
    assert serialize_server_result("tools/call", MODERN, shaped) == shaped


@pytest.mark.parametrize(
    "result",
    [
        {"content": [{"type": "text", "text": "x", "annotations": None}]},
        {"content": [{"type": "text", "text": "x", "_meta": {"z": None}}]},
        {"content": [{"type": "image", "data": "AAAA", "mimeType": "image/png"}]},
        {"content": [{"type": "text", "text": "x"}], "structuredContent": None},
        {"content": [{"type": "text", "text": "x"}], "_meta": {"a": 1}},
        {"content": [{"type": "text", "text": "x"}], "unknownToTheSpec": 1},
        {"content": "not a list"},
    ],
    ids=["null-annotations", "meta-with-null", "image", "null-structured", "result-meta", "unknown-key", "malformed"],
)
def test_any_other_result_is_left_to_the_sdks_surface(result: dict[str, Any]) -> None:
    assert not is_kept_as_is({**result, "resultType": "complete"})


async def test_each_principal_keeps_its_own_session_in_the_lane_and_none_gets_in_without_a_token(
    tmp_path: Path,
) -> None:
    alice, bob, operator = "alice-token-0123456789", "bob-token-0123456789ab", "operator-token-0123456789"
    tokens = [{"token": alice, "principal": "alice"}, {"token": bob, "principal": "bob"}]
    config = write_config(tmp_path, {"state": fixture_server("state")}, auth={"tokens": tokens}, admin_token=operator)
    async with running_app(config) as proxy:
        await post(proxy.url, call("state_remember", {"value": "alice's"}), authorization=f"Bearer {alice}")
        alices = (await post(proxy.url, call("state_recall"), authorization=f"Bearer {alice}")).json()["result"]
        bobs = (await post(proxy.url, call("state_recall"), authorization=f"Bearer {bob}")).json()["result"]
        anonymous = await post(proxy.url, call("state_recall"))
        assert await lane_calls(proxy, config) == 3
    assert alices["structuredContent"] == {"result": ["alice's"]}
    assert bobs["structuredContent"] == {"result": []}
    assert anonymous.status_code == 401


async def test_a_2026_call_past_the_size_limit_is_refused_with_413_whether_or_not_it_declares_its_length(
    config: Path,
) -> None:
    params = call("state_echo", {"text": "x" * (4 * 1024 * 1024)})
    oversized = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode()
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "state_echo",
    }

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(oversized), 65536):
            yield oversized[start : start + 65536]

    async with running_app(config) as proxy, httpx2.AsyncClient(timeout=30) as http:
        declared = await http.post(proxy.url, content=oversized, headers=headers)
        undeclared = await http.post(proxy.url, content=chunked(), headers=headers)
        fitting = await post(proxy.url, call("state_echo", {"text": "x" * (1024 * 1024)}))
        assert await lane_calls(proxy, config) == 1
    assert (declared.status_code, undeclared.status_code) == (413, 413)
    assert fitting.json()["result"]["structuredContent"] == {"result": "x" * (1024 * 1024)}
