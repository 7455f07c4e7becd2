"""The message lane over the legacy HTTP+SSE transport: a client's calls and listings, once its connection is
adopted, parsed once and answered as one event on its session's stream; the transport's own refusals unchanged.

The proxy runs in this process (`running_app`) with the fixture upstream in memory. `RawLegacy` is a client that
reads the event stream and posts messages itself, to see the wire; the SDK's `sse_client` is the real client.
`/admin/status`'s `legacy_lane_calls` says which requests took the lane.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp import Client, MCPError, types
from mcp.client.context import ClientRequestContext
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import FileUrl

from mcpstore_proxy.errors import SHUTTING_DOWN
from tests.conversation import answering_sampling, chatter_until_answered, chattered, structured
from tests.held_call import HeldCall
from tests.inprocess import InProcessProxy, running_app
from tests.raw_session import ALICE, BOB, guarded_config, tool_call
from tests.support import admin, admin_token_of, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

SIZE = 3 * 1024 * 1024


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state")})


async def legacy_lane_calls(proxy: InProcessProxy, config: Path) -> int:
    """How many calls the legacy lane took (`legacy_lane_calls` in `/admin/status`)."""
    return (await _lane_counts(proxy, config))[0]


async def legacy_lane_listings(proxy: InProcessProxy, config: Path) -> int:
    """How many listings the legacy lane answered (`legacy_lane_listings` in `/admin/status`)."""
    return (await _lane_counts(proxy, config))[1]


async def _lane_counts(proxy: InProcessProxy, config: Path) -> tuple[int, int]:
    token = admin_token_of(config)
    status = await admin(proxy.port, "GET", "/status", **({"Authorization": f"Bearer {token}"} if token else {}))
    assert status.status_code == 200, status.text
    return status.json()["legacy_lane_calls"], status.json()["legacy_lane_listings"]


def sse_url(proxy: InProcessProxy) -> str:
    return f"http://127.0.0.1:{proxy.port}/sse"


class RawLegacy:
    """One legacy SSE session read and written by hand: the stream's events in order, and POSTs to its endpoint."""

    def __init__(self, http: httpx2.AsyncClient, base: str, headers: dict[str, str]) -> None:
        self._http = http
        self._base = base
        self._headers = headers
        self.endpoint = ""
        self._send, self._receive = anyio.create_memory_object_stream[dict[str, Any]](1000)

    @asynccontextmanager
    async def messages(self) -> AsyncGenerator[None]:
        async with self._send, self._receive:
            yield

    async def read(self, stream: httpx2.Response) -> None:
        event = ""
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "endpoint":
                self.endpoint = self._base + line.removeprefix("data: ")
            elif line.startswith("data: "):
                await self._send.send(orjson.loads(line.removeprefix("data: ")))

    async def post(self, message: dict[str, Any], **headers: str) -> httpx2.Response:
        return await self._http.post(self.endpoint, content=orjson.dumps(message), headers={**self._headers, **headers})

    async def next_message(self) -> dict[str, Any]:
        with anyio.fail_after(10):
            return await self._receive.receive()

    async def request(self, request_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        assert (await self.post(message)).status_code == 202
        return await self.next_message()

    async def handshake(self) -> None:
        initialize = {
            "protocolVersion": "2024-11-05",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        assert "result" in await self.request(0, "initialize", initialize)
        assert (await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202


@asynccontextmanager
async def raw_legacy(proxy: InProcessProxy, **headers: str) -> AsyncGenerator[RawLegacy]:
    base = f"http://127.0.0.1:{proxy.port}"
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0)) as http,
        http.stream("GET", f"{base}/sse", headers=headers) as stream,
        anyio.create_task_group() as tg,
    ):
        assert stream.status_code == 200
        raw = RawLegacy(http, base, {"content-type": "application/json", **headers})
        async with raw.messages():
            tg.start_soon(raw.read, stream)
            await wait_until(lambda: bool(raw.endpoint), what="the endpoint event")
            yield raw
            tg.cancel_scope.cancel()


async def test_calls_and_listings_take_the_lane_and_answer_as_over_streamable_http(config: Path) -> None:
    async with (
        running_app(config) as proxy,
        Client(sse_client(sse_url(proxy)), mode="legacy", cache=None) as legacy,
        Client(streamable_http_client(proxy.url), mode="legacy", cache=None) as modern_transport,
    ):
        assert await legacy.list_tools() == await modern_transport.list_tools()
        assert await legacy.list_prompts() == await modern_transport.list_prompts()
        for arguments in ({"text": "hello"}, {"text": ""}):
            assert (await legacy.call_tool("state_echo", arguments)) == (
                await modern_transport.call_tool("state_echo", arguments)
            )
        failed = await legacy.call_tool("state_rich", {"fail": True})
        assert failed == await modern_transport.call_tool("state_rich", {"fail": True})
        assert failed.is_error
        with pytest.raises(MCPError) as over_legacy:
            await legacy.call_tool("no_such_tool", {})
        with pytest.raises(MCPError) as over_streamable_http:
            await modern_transport.call_tool("no_such_tool", {})
        assert over_legacy.value.error == over_streamable_http.value.error
        assert await legacy_lane_calls(proxy, config) == 4
        assert await legacy_lane_listings(proxy, config) >= 2  # and the SDK client's own, for output schemas


async def test_each_session_keeps_its_own_state_and_concurrent_calls_each_get_their_own_answer(config: Path) -> None:
    async with (
        running_app(config) as proxy,
        Client(sse_client(sse_url(proxy)), mode="legacy", cache=None) as alice,
        Client(sse_client(sse_url(proxy)), mode="legacy", cache=None) as bob,
    ):
        answers: dict[tuple[str, int], Any] = {}

        async def call(name: str, client: Client, index: int) -> None:
            answers[name, index] = structured(await client.call_tool("state_echo", {"text": f"{name} {index}"}))

        async with anyio.create_task_group() as tg:
            for index in range(16):
                tg.start_soon(call, "alice", alice, index)
                tg.start_soon(call, "bob", bob, index)
        assert answers == {(name, index): f"{name} {index}" for name in ("alice", "bob") for index in range(16)}
        await alice.call_tool("state_remember", {"value": "alice's"})
        assert structured(await bob.call_tool("state_recall", {})) == []
        assert structured(await alice.call_tool("state_recall", {})) == ["alice's"]
        assert await legacy_lane_calls(proxy, config) == 35


async def test_ids_of_every_kind_come_back_and_requests_before_the_handshake_are_the_sdks(config: Path) -> None:
    async with running_app(config) as proxy, raw_legacy(proxy) as raw:
        early = await raw.request(7, "tools/list")  # the SDK's: no connection adopted yet, which it refuses
        assert (early["id"], early["error"]["code"]) == (7, types.INVALID_PARAMS)
        await raw.handshake()
        for request_id in (1, "one", 0, -5, "x" * 300):
            answer = await raw.request(request_id, "tools/call", {"name": "state_echo", "arguments": {"text": "i"}})  # type: ignore[arg-type]
            assert (answer["id"], answer["result"]["structuredContent"]) == (request_id, {"result": "i"})
        assert await legacy_lane_calls(proxy, config) == 5
        listed = await raw.request(8, "tools/list")
        assert (listed["id"], "state_echo" in {tool["name"] for tool in listed["result"]["tools"]}) == (8, True)
        assert await legacy_lane_listings(proxy, config) == 1


async def test_progress_and_log_entries_come_before_the_result_in_order(config: Path) -> None:
    async with running_app(config) as proxy, raw_legacy(proxy) as raw:
        await raw.handshake()
        await raw.request(1, "logging/setLevel", {"level": "info"})
        chatter = tool_call(2, "state_chatter", {"tag": "t", "count": 3}, progressToken="p")
        assert (await raw.post(chatter)).status_code == 202
        seen, answer = await chatter_until_answered(raw.next_message)
        assert answer["result"]["structuredContent"] == {"result": "t"}
        assert seen == chattered("t", 3)
        assert await legacy_lane_calls(proxy, config) == 1


async def test_a_cancelled_call_is_cancelled_upstream_and_never_answered(config: Path, tmp_path: Path) -> None:
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    async with running_app(config) as proxy, raw_legacy(proxy) as raw:
        await raw.handshake()
        arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
        assert (await raw.post(tool_call(1, "state_sleep", arguments))).status_code == 202
        await wait_until(started.exists, what="the call to reach its upstream")
        notice = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
        assert (await raw.post(notice)).status_code == 202
        await wait_until(cancelled.exists, what="the upstream to see the call cancelled")
        assert await raw.request(2, "ping") == {"jsonrpc": "2.0", "id": 2, "result": {}}  # nothing came for 1
        echoed = await raw.request(3, "tools/call", {"name": "state_echo", "arguments": {"text": "after"}})
        assert (echoed["id"], echoed["result"]["structuredContent"]) == (3, {"result": "after"})


async def test_the_upstreams_questions_reach_the_client_during_a_call_and_its_answers_come_back(
    config: Path,
) -> None:
    asked: list[str] = []
    sampling: Any = answering_sampling(asked)  # the SDK's callback type is a union this one's result is part of

    async def roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///work/here"))])

    async with (
        running_app(config) as proxy,
        Client(
            sse_client(sse_url(proxy)),
            mode="legacy",
            cache=None,
            sampling_callback=sampling,
            list_roots_callback=roots,
        ) as client,
    ):
        assert structured(await client.call_tool("state_ask", {"prompt": "the answer?"})) == "forty-two"
        assert structured(await client.call_tool("state_roots", {})) == ["file:///work/here"]
        assert asked == ["the answer?"]
        assert await legacy_lane_calls(proxy, config) == 2


async def test_three_megabytes_each_way_pass_intact(config: Path) -> None:
    text = "0123456789abcdef" * (SIZE // 16)  # a request body stays within the transport's 4 MiB limit
    async with running_app(config) as proxy, raw_legacy(proxy) as raw:
        await raw.handshake()
        answer = await raw.request(1, "tools/call", {"name": "state_echo", "arguments": {"text": text}})
        assert answer["result"]["structuredContent"]["result"] == text
        assert await legacy_lane_calls(proxy, config) == 1


async def test_a_body_past_the_limit_is_refused_413_and_one_within_it_is_served(config: Path) -> None:
    async with running_app(config) as proxy, raw_legacy(proxy) as raw:
        await raw.handshake()
        too_big = tool_call(1, "state_echo", {"text": "x" * (4 * 1024 * 1024 + 1)})
        assert (await raw.post(too_big)).status_code == 413
        echoed = await raw.request(2, "tools/call", {"name": "state_echo", "arguments": {"text": "small"}})
        assert (echoed["id"], echoed["result"]["structuredContent"]) == (2, {"result": "small"})
        assert await legacy_lane_calls(proxy, config) == 1


async def test_a_post_to_another_principals_session_is_refused_404_and_runs_nothing(tmp_path: Path) -> None:
    config = guarded_config(tmp_path)
    async with (
        running_app(config) as proxy,
        raw_legacy(proxy, authorization=f"Bearer {ALICE}") as alice,
    ):
        await alice.handshake()
        remember = tool_call(1, "state_remember", {"value": "from bob"})
        stolen = await alice.post(remember, authorization=f"Bearer {BOB}")
        assert (stolen.status_code, stolen.text) == (404, "Could not find session")
        recalled = await alice.request(2, "tools/call", {"name": "state_recall", "arguments": {}})
        assert recalled["result"]["structuredContent"] == {"result": []}  # Bob's call never ran in Alice's session
        anonymous = await alice.post(remember, authorization="")
        assert anonymous.status_code == 401
        assert await legacy_lane_calls(proxy, config) == 1


async def test_a_post_from_a_foreign_origin_or_with_the_wrong_media_type_is_refused_as_the_sdk_refuses_it(
    config: Path,
) -> None:
    async with running_app(config) as proxy, raw_legacy(proxy) as raw:
        await raw.handshake()
        call = tool_call(1, "state_remember", {"value": "forged"})
        assert (await raw.post(call, origin="http://attacker.example")).status_code == 403
        assert (await raw.post(call, **{"content-type": "text/plain"})).status_code == 400
        recalled = await raw.request(2, "tools/call", {"name": "state_recall", "arguments": {}})
        assert recalled["result"]["structuredContent"] == {"result": []}
        assert await legacy_lane_calls(proxy, config) == 1


async def test_a_post_naming_no_session_an_invalid_one_or_an_unknown_one_gets_the_transports_own_answer(
    config: Path,
) -> None:
    async with running_app(config) as proxy, raw_legacy(proxy) as raw, httpx2.AsyncClient(timeout=30) as http:
        await raw.handshake()
        body = orjson.dumps(tool_call(1, "state_echo", {"text": "x"}))
        base = f"http://127.0.0.1:{proxy.port}/messages/"
        headers = {"content-type": "application/json"}
        missing = await http.post(base, content=body, headers=headers)
        invalid = await http.post(f"{base}?session_id=not-a-uuid", content=body, headers=headers)
        unknown = await http.post(f"{base}?session_id={'0' * 32}", content=body, headers=headers)
        assert [(r.status_code, r.text) for r in (missing, invalid, unknown)] == [
            (400, "session_id is required"),
            (400, "Invalid session ID"),
            (404, "Could not find session"),
        ]
        assert (await raw.post(tool_call(2, "state_echo", {"text": "mine"}))).status_code == 202
        assert (await raw.next_message())["result"]["structuredContent"] == {"result": "mine"}
        assert await legacy_lane_calls(proxy, config) == 1


async def test_during_the_drain_a_lane_call_in_flight_completes_on_its_stream_and_a_new_call_is_refused(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=60)
    held = HeldCall()  # the call stays in flight until the test releases it
    too_late: pytest.ExceptionInfo[MCPError] | None = None
    sampling: Any = held.answer_once_released
    async with (
        running_app(config) as proxy,
        Client(sse_client(sse_url(proxy)), mode="legacy", cache=None, sampling_callback=sampling) as client,
    ):
        await client.call_tool("state_echo", {"text": "adopted"})
        async with held.in_flight(client, "state_ask"):
            assert await legacy_lane_calls(proxy, config) == 2  # the held call is the lane's
            await proxy.start_draining()
            with pytest.raises(MCPError) as refused:  # a new request in the open session
                await client.call_tool("state_echo", {"text": "too late"})
            too_late = refused
            held.release()
        assert held.answers == ["answered"]
    assert too_late is not None
    assert too_late.value.code == SHUTTING_DOWN
