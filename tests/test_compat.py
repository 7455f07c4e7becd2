"""One test per assumption that `mcpstore_proxy.compat` makes about the private parts of `mcp` (those about uvicorn
are in `test_compat_uvicorn`).

If an upgrade breaks one, it fails here, by name, rather than somewhere deep in a proxied call.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import re
import sys
import typing
from typing import Any

import anyio
import httpx2
import mcp.client.stdio
import mcp.server.streamable_http
import mcp.shared._otel
import mcp.shared.jsonrpc_dispatcher
import pytest
import sse_starlette
from mcp import StdioServerParameters, types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.connection import Connection
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import EventMessage, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared._context_streams import create_context_streams
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from opentelemetry import trace
from starlette.types import Message

from mcpstore_proxy import compat
from mcpstore_proxy.framing import FirstEventResponse
from tests.sdk_serving import handshake_client, listing_server, serving
from tests.support import wait_until

pytestmark = pytest.mark.anyio


async def test_a_request_context_reaches_its_connection_and_the_connection_is_the_same_for_each_request() -> None:
    seen: list[Connection] = []
    manager = StreamableHTTPSessionManager(app=listing_server(seen))
    async with serving(manager) as url, handshake_client(url) as client:
        await client.list_tools()
        await client.list_tools()
    assert len(seen) == 2
    assert seen[0] is seen[1]
    assert seen[0].session_id is not None
    assert isinstance(seen[0].state, dict)
    assert seen[0].exit_stack is not None


async def test_the_manager_counts_its_open_sessions() -> None:
    manager = StreamableHTTPSessionManager(app=listing_server([]))
    async with serving(manager) as url:
        assert compat.open_http_sessions(manager) == 0
        async with handshake_client(url) as first, handshake_client(url) as second:
            await first.list_tools()
            await second.list_tools()
            assert compat.open_http_sessions(manager) == 2


async def test_terminating_the_managers_sessions_ends_them_and_unwinds_each_connection() -> None:
    seen: list[Connection] = []
    manager = StreamableHTTPSessionManager(app=listing_server(seen))
    ended = anyio.Event()
    async with serving(manager) as url, httpx2.AsyncClient() as http:
        # A raw session: the SDK client would re-open its event stream and raise once the session is gone.
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        opened = await http.post(
            url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}, headers=headers
        )
        headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers)

        async def note_end() -> None:
            ended.set()

        seen[0].exit_stack.push_async_callback(note_end)
        await compat.terminate_http_sessions(manager)
        with anyio.fail_after(5):
            await ended.wait()
        assert compat.open_http_sessions(manager) == 0
        gone = await http.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=headers)
        assert gone.status_code == 404


def test_transport_streams_is_the_read_and_write_stream_pair_the_sdk_transports_yield() -> None:
    assert typing.get_origin(compat.TransportStreams) is tuple
    read, write = typing.get_args(compat.TransportStreams)
    assert typing.get_origin(read) is ReadStream
    assert typing.get_origin(write) is WriteStream


async def test_the_managers_session_limit_can_be_changed_and_past_it_a_new_session_gets_503() -> None:
    manager = StreamableHTTPSessionManager(app=listing_server([]), max_sessions=10)
    compat.set_session_limit(manager, 1)
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with serving(manager) as url, httpx2.AsyncClient() as http:
        assert (await http.post(url, json=initialize, headers=headers)).status_code == 200
        refused = await http.post(url, json=initialize, headers=headers)
        assert refused.status_code == 503
        compat.set_session_limit(manager, 2)
        assert (await http.post(url, json=initialize, headers=headers)).status_code == 200


async def test_the_sdk_builds_each_post_answer_with_the_event_source_response_name_we_rebind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []

    class Recording(FirstEventResponse):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            built.append(scope["method"])
            await super().__call__(scope, receive, send)

    # Start from the SDK's own binding (an earlier test may have installed ours); restored after the test.
    monkeypatch.setattr(mcp.server.streamable_http, "EventSourceResponse", sse_starlette.EventSourceResponse)
    compat.frame_answers_by_first_event(Recording)
    manager = StreamableHTTPSessionManager(app=listing_server([]))
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    async with serving(manager) as url, httpx2.AsyncClient() as http:
        opened = await http.post(
            url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}, headers=headers
        )
        assert opened.headers["content-type"] == "application/json"
        assert opened.json()["id"] == 1
    assert built == ["POST"]


async def _open_raw_session(http: httpx2.AsyncClient, url: str) -> str:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    opened = await http.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}, headers=headers
    )
    return opened.headers["mcp-session-id"]


async def test_a_session_is_found_by_its_id_only_for_the_principal_that_opened_it_and_only_while_it_lives() -> None:
    manager = StreamableHTTPSessionManager(app=listing_server([]))
    anonymous: dict[str, Any] = {"type": "http"}
    someone = {"type": "http", "user": AuthenticatedUser(AccessToken(token="t", client_id="someone", scopes=[]))}
    async with serving(manager) as url, httpx2.AsyncClient() as http:
        session_id = await _open_raw_session(http, url)
        transport = compat.http_session(manager, session_id, anonymous)
        assert isinstance(transport, StreamableHTTPServerTransport)
        assert transport.mcp_session_id == session_id
        assert compat.http_session(manager, session_id, someone) is None
        assert compat.http_session(manager, "0" * 32, anonymous) is None
        await transport.terminate()
        assert compat.http_session(manager, session_id, anonymous) is None


class _Sink:
    """A standing stream as the SDK's transport uses one: what it was sent, and whether it was closed."""

    def __init__(self) -> None:
        self.events: list[EventMessage] = []
        self.is_closed = False

    async def send(self, event: EventMessage) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.is_closed = True

    async def aclose(self) -> None:
        self.close()


async def test_a_standing_stream_is_put_where_the_sdk_routes_messages_outside_requests_one_per_session() -> None:
    assert "GET_STREAM_KEY" in inspect.getsource(StreamableHTTPServerTransport.connect)  # where the router sends them
    manager = StreamableHTTPSessionManager(app=listing_server([]))
    async with serving(manager) as url, httpx2.AsyncClient() as http:
        session_id = await _open_raw_session(http, url)
        transport = compat.http_session(manager, session_id, {"type": "http"})
        assert transport is not None
        streams: dict[Any, Any] = transport._request_streams  # pyright: ignore[reportPrivateUsage]
        first, second = _Sink(), _Sink()
        with compat.standing_stream(transport, first) as is_ours:
            assert is_ours
            assert streams[mcp.server.streamable_http.GET_STREAM_KEY] == (first, first)
            with compat.standing_stream(transport, second) as is_second_ours:
                assert not is_second_ours
            assert not first.is_closed
        assert mcp.server.streamable_http.GET_STREAM_KEY not in streams
        assert first.is_closed
        with compat.standing_stream(transport, second) as is_ours:
            assert is_ours
            notice = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/tools/list_changed")
            writer = transport._write_stream  # pyright: ignore[reportPrivateUsage]
            assert writer is not None
            await writer.send(SessionMessage(notice))  # as the server session sends one outside any request
            await wait_until(lambda: len(second.events) == 1, what="the router to send the notice")
            assert second.events[0].message == notice
            await transport.terminate()
            assert second.is_closed


async def test_the_sdk_clients_request_spans_are_skipped_until_a_tracer_provider_is_set() -> None:
    compat.spans_only_when_traced()
    span_of: Any = getattr(mcp.shared.jsonrpc_dispatcher, "otel_span")  # noqa: B009  # the name the SDK calls
    inject: Any = getattr(mcp.shared.jsonrpc_dispatcher, "inject_trace_context")  # noqa: B009
    assert span_of is not mcp.shared._otel.otel_span  # pyright: ignore[reportPrivateUsage]
    with span_of("MCP send tools/call", kind=trace.SpanKind.CLIENT) as span:
        assert span is trace.INVALID_SPAN
        meta: dict[str, Any] = {}
        inject(meta)
        assert meta == {}
    compat.spans_only_when_traced()  # twice is harmless


def test_the_sdk_dispatcher_sends_each_request_inside_otel_span_and_injects_its_trace_context() -> None:
    source = inspect.getsource(mcp.shared.jsonrpc_dispatcher.JSONRPCDispatcher.send_raw_request)
    assert "with otel_span(" in source
    assert "inject_trace_context(out_meta)" in source


def test_the_sdk_dispatcher_hands_a_messages_parts_on_and_is_done_with_it_before_reading_the_next() -> None:
    run = inspect.getsource(mcp.shared.jsonrpc_dispatcher.JSONRPCDispatcher.run)
    assert "await self._dispatch(item, on_request, on_notify, sender_ctx)" in run
    dispatch = inspect.getsource(mcp.shared.jsonrpc_dispatcher.JSONRPCDispatcher._dispatch)  # pyright: ignore[reportPrivateUsage]
    assert re.findall(r"\bitem\.(\w+)", dispatch) == ["metadata", "message"]  # read once each, then handed on


async def test_the_context_a_message_came_in_is_taken_out_of_the_sdks_context_stream() -> None:
    send, receive = create_context_streams[int](1)
    async with send, receive:
        await send.send(1)
        assert await receive.receive() == 1
        taken = compat.take_last_context(receive)
        assert isinstance(taken, contextvars.Context)
        assert receive.last_context is None
    assert compat.take_last_context(object()) is None


async def test_a_stdio_server_is_spawned_as_stdio_client_spawns_it_leading_a_process_group_of_its_own() -> None:
    script = "import os, sys; sys.stdout.write(f'{os.getpgid(0)} {os.getpid()} {os.environ.get(\"EXTRA\")}\\n')"
    parameters = StdioServerParameters(command=sys.executable, args=["-c", script], env={"EXTRA": "kept"})
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230  # /dev/null never blocks
        process = await compat.spawn_stdio_server(parameters, errlog)
    try:
        assert process.stdout is not None
        group, pid, extra = (await process.stdout.receive()).decode().split()
    finally:
        await compat.stop_stdio_server(process)
    assert group == pid == str(process.pid)
    assert extra == "kept"
    assert process.returncode is not None


def test_stdio_client_stops_its_server_with_the_helper_the_proxy_calls() -> None:
    source = inspect.getsource(mcp.client.stdio.stdio_client)
    assert "await _stop_server_process(process)" in source
    assert "_create_platform_compatible_process(" in source


async def test_a_stdio_servers_stdin_wraps_an_asyncio_stream_writer_that_the_proxy_writes_to() -> None:
    parameters = StdioServerParameters(command=sys.executable, args=["-c", "import sys; print(sys.stdin.readline())"])
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230  # /dev/null never blocks
        process = await compat.spawn_stdio_server(parameters, errlog)
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        writer = compat.stdin_writer(process.stdin)
        assert writer is not None
        writer.write(b"hello\n")
        await writer.drain()
        assert await process.stdout.receive() == b"hello\n\n"
    finally:
        await compat.stop_stdio_server(process)


async def test_a_legacy_sse_session_is_the_one_last_opened_and_is_found_only_for_its_principal_while_it_lives() -> None:
    transport = SseServerTransport("/messages/")
    someone = AuthenticatedUser(AccessToken(token="t", client_id="someone", scopes=[]))
    sent: list[Message] = []
    left = anyio.Event()

    async def receive() -> Message:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    stream: dict[str, Any] = {"type": "http", "method": "GET", "path": "/sse", "query_string": b"", "headers": []}
    async with transport.connect_sse(stream, receive, send) as (read_stream, write_stream), read_stream, write_stream:
        session = compat.newest_legacy_session(transport)
        await wait_until(
            lambda: any(f"session_id={session}".encode() in message.get("body", b"") for message in sent),
            what="the endpoint event to name the session",
        )
        post: dict[str, Any] = {"type": "http", "method": "POST", "query_string": f"session_id={session}".encode()}
        assert compat.legacy_session(transport, post) == session
        assert compat.legacy_session_named(post) == session
        assert compat.legacy_session(transport, {**post, "user": someone}) is None
        assert compat.legacy_session(transport, {**post, "query_string": b"session_id=" + b"0" * 32}) is None
        assert compat.legacy_session(transport, {**post, "query_string": b"session_id=nope"}) is None
        left.set()
    assert compat.legacy_session(transport, post) is None
