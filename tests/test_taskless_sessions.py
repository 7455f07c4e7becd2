"""`TasklessSessionManager`: handshake-era Streamable HTTP sessions served by the SDK's own transport, dispatcher and
runner, with no task of their own, and nothing lost: answers, progress before them, the server's questions to the
client, cancellation, DELETE, idle expiry and shutdown each end a session as the SDK's task ending did.

A small SDK `Server` behind uvicorn on a loopback port in this event loop (`tests.sdk_serving`), reached by the SDK's
own client or by plain HTTP; the SDK's `StreamableHTTPSessionManager` beside it where the difference is the point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import anyio
import httpx2
import pytest
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import (
    EventCallback,
    EventId,
    EventStore,
    StreamableHTTPServerTransport,
    StreamId,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.types import JSONRPCMessage

from mcpstore_proxy import compat
from mcpstore_proxy.taskless_sessions import IdleCountdown, TasklessSessionManager, hold
from tests.clock import LoopClock
from tests.sdk_serving import handshake_client, serving
from tests.support import wait_until

pytestmark = pytest.mark.anyio

_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@dataclass
class _Seen:
    """What the server's handlers saw: connections whose exit stack unwound, calls cancelled, one to release."""

    ended: list[str] = field(default_factory=list[str])
    cancelled: list[str] = field(default_factory=list[str])
    waiting: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)


def _server(seen: _Seen) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: object) -> types.ListToolsResult:
        connection = compat.downstream_connection(ctx)
        if not connection.state.get("watched"):
            connection.state["watched"] = True
            connection.exit_stack.callback(seen.ended.append, connection.session_id or "")
        return types.ListToolsResult(tools=[])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        if params.name == "wait":
            seen.waiting.set()
            try:
                await seen.release.wait()
            except anyio.get_cancelled_exc_class():
                seen.cancelled.append(params.name)
                raise
        await ctx.session.report_progress(0.5, 1.0, "half way")
        await ctx.session.send_ping()  # a question to the client, answered on a POST of its own
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"done {params.name}")])

    return Server("taskless", on_list_tools=list_tools, on_call_tool=call_tool)


@asynccontextmanager
async def _served(
    seen: _Seen, manager_class: type[StreamableHTTPSessionManager] = TasklessSessionManager, **options: Any
) -> AsyncGenerator[tuple[StreamableHTTPSessionManager, str]]:
    manager = manager_class(app=_server(seen), **options)
    async with serving(manager) as url:
        yield manager, url


async def _open(http: httpx2.AsyncClient, url: str) -> str:
    """A session opened with plain HTTP (no client task left behind): its id."""
    opened = await http.post(url, json=_INITIALIZE, headers=_HEADERS)
    assert opened.status_code == 200
    session_id = opened.headers["mcp-session-id"]
    headers = {**_HEADERS, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-06-18"}
    ready = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert ready.status_code == 202
    listed = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
    assert listed.status_code == 200
    return session_id


def _session_headers(session_id: str) -> dict[str, str]:
    return {**_HEADERS, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-06-18"}


@pytest.mark.parametrize(
    ("manager_class", "tasks_per_session"), [(StreamableHTTPSessionManager, 2), (TasklessSessionManager, 0)]
)
async def test_an_idle_session_holds_no_task_of_its_own_where_the_sdks_manager_holds_two(
    manager_class: type[StreamableHTTPSessionManager], tasks_per_session: int
) -> None:
    async with _served(_Seen(), manager_class) as (manager, url), httpx2.AsyncClient() as http:
        await _open(http, url)  # the first one, so the loop's and uvicorn's own tasks are all started
        await wait_until(lambda: not _requests_running(), what="the first session's requests to end")
        before = len(asyncio.all_tasks())
        for _ in range(3):
            await _open(http, url)
        await wait_until(lambda: not _requests_running(), what="the sessions' requests to end")
        assert compat.open_http_sessions(manager) == 4
        assert len(asyncio.all_tasks()) - before == 3 * tasks_per_session


def _requests_running() -> bool:
    return any("run_asgi" in repr(task.get_coro()) for task in asyncio.all_tasks())


async def test_a_call_gets_its_progress_before_its_answer_and_the_servers_question_is_answered_meanwhile() -> None:
    reported: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    async with _served(_Seen()) as (_manager, url), handshake_client(url) as client:
        for name in ("one", "two"):
            result = await client.call_tool(name, {}, progress_callback=on_progress)
            assert result.content == [types.TextContent(type="text", text=f"done {name}")]
        assert reported == [(0.5, 1.0, "half way"), (0.5, 1.0, "half way")]


async def test_deleting_a_session_cancels_its_call_in_flight_unwinds_its_connection_and_forgets_it() -> None:
    seen = _Seen()
    async with _served(seen) as (manager, url), httpx2.AsyncClient() as http, anyio.create_task_group() as tg:
        session_id = await _open(http, url)
        call: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "wait", "arguments": {}},
        }
        tg.start_soon(partial(http.post, url, json=call, headers=_session_headers(session_id)))
        await seen.waiting.wait()
        deleted = await http.delete(url, headers=_session_headers(session_id))
        assert deleted.status_code == 200
        await wait_until(lambda: seen.cancelled == ["wait"], what="the call in flight to be cancelled")
        await wait_until(lambda: seen.ended == [session_id], what="the connection's exit stack to unwind")
        assert compat.open_http_sessions(manager) == 0
        again = await http.post(
            url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=_session_headers(session_id)
        )
        assert again.status_code == 404
        # The legitimate use beside it: a new session opens and answers.
        assert await _open(http, url) != session_id


async def test_a_session_idle_for_its_timeout_ends_and_one_in_use_does_not() -> None:
    seen = _Seen()
    # The clock is moved for the server's whole life: its timers set on a moved clock are due by that clock.
    with LoopClock() as clock:
        async with _served(seen, session_idle_timeout=60) as (manager, url), httpx2.AsyncClient() as http:
            idle = await _open(http, url)
            busy = await _open(http, url)
            clock.move(45)  # not `advance`: its wait for every task to block never ends beside uvicorn's ticks
            listed = await http.post(
                url, json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, headers=_session_headers(busy)
            )
            assert listed.status_code == 200
            clock.move(30)  # 75 s since `idle` was last used, 30 since `busy` was
            await wait_until(lambda: seen.ended == [idle], what="the idle session to end")
            assert compat.open_http_sessions(manager) == 1
            gone = await http.post(
                url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, headers=_session_headers(idle)
            )
            assert gone.status_code == 404
            clock.move(61)
            await wait_until(lambda: seen.ended == [idle, busy], what="the other session to end in its turn")


async def test_leaving_the_manager_ends_every_session_still_open() -> None:
    seen = _Seen()
    async with httpx2.AsyncClient() as http:
        async with _served(seen) as (_manager, url):
            opened = {await _open(http, url), await _open(http, url)}
        assert set(seen.ended) == opened


def _countdown(expired: list[float], timeout: float = 60) -> tuple[StreamableHTTPServerTransport, IdleCountdown]:
    """A session's transport with its idle countdown, as `TasklessSessionManager` gives it one."""
    loop = asyncio.get_running_loop()
    transport = StreamableHTTPServerTransport(mcp_session_id="a" * 32, idle_timeout=timeout)
    countdown = IdleCountdown(transport, timeout, lambda: expired.append(loop.time()), loop)
    transport.idle_scope = cast(anyio.CancelScope, countdown)
    return transport, countdown


async def test_an_idle_countdown_moved_later_fires_once_at_its_last_deadline_and_never_while_held() -> None:
    expired: list[float] = []
    loop = asyncio.get_running_loop()
    with LoopClock() as clock:
        _, countdown = _countdown(expired)
        countdown.deadline = loop.time() + 10
        countdown.deadline = loop.time() + 20  # a request came and went: the timer is not moved now
        await clock.advance(15)
        assert expired == []
        countdown.deadline = float("inf")  # a request in flight
        await clock.advance(10)
        assert expired == []
        ended_at = loop.time() + 5
        countdown.deadline = ended_at
        await clock.advance(6)
        assert len(expired) == 1
        assert expired[0] >= ended_at
        assert countdown.cancel_called
        countdown.cancel()  # again: nothing more
        assert len(expired) == 1


async def test_a_session_the_lane_holds_expires_its_timeout_after_the_last_holder_lets_go() -> None:
    expired: list[float] = []
    loop = asyncio.get_running_loop()
    with LoopClock() as clock:
        transport, _ = _countdown(expired)
        with hold(transport) as first:
            with hold(transport) as second:  # a standing stream and a call, say
                assert (first, second) == (True, True)
                await clock.advance(120)
            await clock.advance(120)
            assert expired == []  # still held by the first
        let_go = loop.time()
        await clock.advance(59)
        assert expired == []
        await clock.advance(2)
        assert len(expired) == 1
        assert expired[0] >= let_go + 60
        with hold(transport) as is_open:  # a request arriving as the session ends
            assert is_open is False
        assert transport._requests_in_flight == 0  # pyright: ignore[reportPrivateUsage]  # counted out again


async def test_a_session_without_an_idle_timeout_is_held_without_counting() -> None:
    transport = StreamableHTTPServerTransport(mcp_session_id="b" * 32, idle_timeout=None)
    with hold(transport) as is_open:
        assert is_open is True
        assert transport._requests_in_flight == 0  # pyright: ignore[reportPrivateUsage]


class _ForgetfulStore(EventStore):
    """An event store that keeps the priming events and fails on every message."""

    def __init__(self) -> None:
        self.failed = 0

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        if message is not None:
            self.failed += 1
            raise OSError("the event store's disk is full")
        return f"{stream_id}-priming"

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        return None


async def test_an_event_store_that_fails_costs_a_message_its_event_id_not_the_session_or_the_others() -> None:
    store = _ForgetfulStore()
    async with _served(_Seen(), event_store=store) as (manager, url), handshake_client(url) as client:
        for name in ("one", "two"):
            result = await client.call_tool(name, {})
            assert result.content == [types.TextContent(type="text", text=f"done {name}")]
        assert store.failed >= 2
        assert compat.open_http_sessions(manager) == 1


def test_an_sdk_without_a_part_taskless_sessions_drive_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    TasklessSessionManager(app=_server(_Seen()))  # this SDK has them all
    monkeypatch.delattr(JSONRPCDispatcher, "_fan_out_closed")
    with pytest.raises(RuntimeError, match=r"JSONRPCDispatcher\._fan_out_closed.*pin mcp"):
        TasklessSessionManager(app=_server(_Seen()))
