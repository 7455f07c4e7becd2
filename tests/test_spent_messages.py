"""A session's read stream that lets go of each message once its reader asks for the next (`spent_messages`): in
memory over the SDK's own context streams, then through the proxy served in process, where an idle session's
loop used to keep the HTTP request that carried its last message."""

from __future__ import annotations

import asyncio
import contextvars
import gc

import anyio
import pytest
from mcp import types
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import ServerMessageMetadata, SessionMessage

from mcpstore_proxy.downstream import REQUEST_SCOPE
from mcpstore_proxy.spent_messages import SPENT, ReleasingReadStream
from mcpstore_proxy.transports import SessionReadStream
from tests.raw_session import opened_session
from tests.support import PROJECT_ROOT, wait_until

pytestmark = pytest.mark.anyio

_SENDER: contextvars.ContextVar[str] = contextvars.ContextVar("sender", default="")


def _message(number: int) -> SessionMessage:
    notification = types.JSONRPCNotification(jsonrpc="2.0", method=f"notifications/n{number}")
    return SessionMessage(notification, metadata=ServerMessageMetadata(related_request_id=number))


async def test_each_message_arrives_whole_and_is_emptied_only_when_the_next_is_asked_for() -> None:
    send, receive = create_context_streams[SessionMessage | Exception](4)
    first, second = _message(1), _message(2)
    async with send, ReleasingReadStream(receive) as stream:
        await send.send(first)
        await send.send(second)
        assert await stream.receive() is first
        assert first.metadata is not None
        assert first.message == _message(1).message
        assert await stream.receive() is second
        assert (first.message, first.metadata) == (SPENT, None)
        assert second.message == _message(2).message
        assert second.metadata is not None


async def test_the_context_a_message_was_sent_in_is_handed_on_and_then_held_nowhere() -> None:
    send, receive = create_context_streams[SessionMessage | Exception](4)
    async with send, ReleasingReadStream(receive) as stream:
        token = _SENDER.set("the sender's")
        try:
            await send.send(_message(1))
        finally:
            _SENDER.reset(token)
        await send.send(_message(2))
        await stream.receive()
        context = stream.last_context
        assert context is not None
        assert context.run(_SENDER.get) == "the sender's"
        assert receive.last_context is None  # the SDK's stream no longer holds it
        await stream.receive()
        assert stream.last_context is not context


async def test_errors_pass_through_and_the_end_of_the_stream_ends_iteration() -> None:
    send, receive = create_context_streams[SessionMessage | Exception](4)
    fault = ValueError("unparsable")
    async with ReleasingReadStream(receive) as stream:
        async with send:
            await send.send(fault)
            await send.send(_message(1))
        seen = [item if isinstance(item, Exception) else item.message async for item in stream]
    assert seen == [fault, _message(1).message]


async def test_an_upstream_sessions_read_stream_empties_what_it_gave_out_and_tells_when_the_upstream_ended() -> None:
    send, receive = create_context_streams[SessionMessage | Exception](4)
    ended: list[bool] = []
    first = _message(1)
    async with SessionReadStream(receive, lambda: ended.append(True)) as stream:
        async with send:
            await send.send(first)
            await send.send(_message(2))
        assert await anext(stream) is first
        assert first.message == _message(1).message
        second = await stream.receive()
        assert isinstance(second, SessionMessage)
        assert second.message == _message(2).message
        assert (first.message, first.metadata) == (SPENT, None)
        assert not ended
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert ended == [True]
    assert stream.has_ended


# Through the proxy: an idle session's loop holds no HTTP request.


def _requests_held() -> int:
    """The SDK's message metadata objects, and contexts, alive in this process that still hold the HTTP request of a
    message (its `Request`, or its scope). The event loop's timers are left out: each keeps the context it was armed
    in until it is due, and the tests' loop (asyncio's, not uvloop) keeps a cancelled one until then too."""
    gc.collect()
    alive = gc.get_objects()
    held = 0
    for item in alive:
        if isinstance(item, ServerMessageMetadata) and item.request_context is not None:
            held += 1
        elif isinstance(item, contextvars.Context) and item.get(REQUEST_SCOPE) is not None:
            holders = [holder for holder in gc.get_referrers(item) if holder is not alive]
            held += any(not isinstance(holder, asyncio.TimerHandle) for holder in holders)
    return held


async def test_an_idle_session_keeps_none_of_the_http_requests_its_messages_came_in() -> None:
    # The bundled demo upstreams: real processes over stdio, as in production.
    async with opened_session(PROJECT_ROOT / "config" / "proxy.yaml") as (_, _, session):
        # `initialize` and `notifications/initialized` were sent; a call (the lane's), a listing (the SDK's)
        called = await session.call_tool(1, "notes_list_notes", {})
        assert called.status_code == 200
        listed = await session.post({"jsonrpc": "2.0", "id": 2, "method": "prompts/list"})
        assert listed.status_code == 200
        await wait_until(lambda: _requests_held() == 0, what="the session to let go of every request it served")
        with anyio.fail_after(5):
            again = await session.call_tool(3, "notes_list_notes", {})
        assert again.status_code == 200
