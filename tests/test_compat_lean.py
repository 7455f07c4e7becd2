"""Pins of `compat`'s lean stand-ins for the SDK's per-session objects: the SDK still makes each with the name
`compat` rebinds, and the stand-in behaves as the original where the SDK uses it."""

from __future__ import annotations

import contextvars
import inspect
import re
from contextlib import AsyncExitStack
from typing import TypeVar

import mcp.client.sse
import mcp.client.streamable_http
import mcp.server.connection
import mcp.server.sse
import mcp.server.streamable_http
import pytest
from mcp.server.connection import Connection
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared._context_streams import create_context_streams

from mcpstore_proxy import compat
from mcpstore_proxy.lean_channels import LeanContextStreams, LeanReceiveStream, LeanSendStream
from tests.sdk_serving import handshake_client, listing_server, serving

pytestmark = pytest.mark.anyio

T = TypeVar("T")


async def test_each_session_of_the_sdks_transport_carries_its_messages_on_the_channels_we_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tuple[object, object]] = []

    class Counted(LeanContextStreams[T]):
        def __new__(cls, max_buffer_size: float = 0) -> tuple[LeanSendStream[T], LeanReceiveStream[T]]:
            made.append(LeanContextStreams[T](max_buffer_size))
            return made[-1]  # pyright: ignore[reportReturnType]

    _sdks_own_channels(monkeypatch)
    compat.carry_session_messages_on(Counted)
    compat.carry_session_messages_on(Counted)  # again: harmless
    manager = StreamableHTTPSessionManager(app=listing_server([]))
    async with serving(manager) as url, handshake_client(url) as client:
        assert (await client.list_tools()).tools == []
    assert len(made) == 4  # messages in and out, of the server's session and of the client's
    assert all(isinstance(receive, LeanReceiveStream) for _, receive in made)


def test_every_sdk_transport_the_proxy_opens_sessions_with_makes_them_where_the_name_is_rebound() -> None:
    sources = {
        "server, Streamable HTTP": inspect.getsource(mcp.server.streamable_http.StreamableHTTPServerTransport.connect),
        "server, legacy SSE": inspect.getsource(mcp.server.sse.SseServerTransport.connect_sse),
        "client, Streamable HTTP": inspect.getsource(mcp.client.streamable_http.streamable_http_client),
        "client, legacy SSE": inspect.getsource(mcp.client.sse.sse_client),
    }
    for transport, source in sources.items():
        assert source.count("= create_context_streams[") == 2, transport


def _sdks_own_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from the SDK's own bindings (an earlier test may have installed ours); restored after the test."""
    for module in (mcp.server.streamable_http, mcp.server.sse, mcp.client.streamable_http, mcp.client.sse):
        monkeypatch.setattr(module, "create_context_streams", create_context_streams)


def test_a_transport_that_no_longer_makes_its_streams_with_create_context_streams_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sdks_own_channels(monkeypatch)
    monkeypatch.setattr(mcp.client.sse, "create_context_streams", lambda size=0: (None, None))
    with pytest.raises(RuntimeError, match="create_context_streams"):
        compat.carry_session_messages_on(LeanContextStreams)


async def test_the_context_a_message_came_in_is_taken_out_of_a_lean_channel_too() -> None:
    send, receive = LeanContextStreams[int](1)
    async with send, receive:
        await send.send(1)
        assert await receive.receive() == 1
        assert isinstance(compat.take_last_context(receive), contextvars.Context)
        assert receive.last_context is None


async def test_each_connection_the_sdk_makes_keeps_its_exit_callbacks_in_a_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Start from the SDK's own binding (an earlier test may have installed ours); restored after the test.
    monkeypatch.setattr(mcp.server.connection, "AsyncExitStack", AsyncExitStack)
    compat.keep_connection_callbacks_in_lists()
    compat.keep_connection_callbacks_in_lists()  # again: harmless
    seen: list[Connection] = []
    manager = StreamableHTTPSessionManager(app=listing_server(seen))
    async with serving(manager) as url, handshake_client(url) as client:
        await client.list_tools()
    assert isinstance(seen[0].exit_stack, compat.ListExitStack)


def test_an_sdk_that_no_longer_makes_its_exit_stacks_with_async_exit_stack_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mcp.server.connection, "AsyncExitStack", object)
    with pytest.raises(RuntimeError, match="AsyncExitStack"):
        compat.keep_connection_callbacks_in_lists()


async def test_a_list_exit_stack_unwinds_last_in_first_out_and_hands_its_callbacks_on_whole() -> None:
    unwound: list[str] = []

    async def note(what: str) -> None:
        unwound.append(what)

    async with compat.ListExitStack() as stack:
        stack.push_async_callback(note, "first")
        stack.callback(unwound.append, "second")
        moved = stack.pop_all()
        stack.push_async_callback(note, "left")
    assert unwound == ["left"]
    await moved.aclose()
    assert unwound == ["left", "second", "first"]


def test_the_stdlibs_exit_stack_only_appends_pops_and_tests_its_callbacks() -> None:
    source = inspect.getsource(AsyncExitStack.__mro__[1])  # contextlib._BaseExitStack
    source += inspect.getsource(AsyncExitStack)
    uses = set(re.findall(r"_exit_callbacks(\.\w+\(\)?|\s*=|\b)", source))
    assert uses <= {"", ".append(", ".pop()", " =", "="}, uses
