"""The lane's standing event stream: a `StandingStream` in memory (ASGI's `receive` and `send` as streams and
lists, the session's messages sent to it as the SDK's transport sends them); then a session's `GET` through the
proxy served in process, for what only the whole path shows (the SDK's refusals, session ends, principals)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import types
from mcp.server.streamable_http import EventMessage
from starlette.types import Message

from mcpstore_proxy.lane_stream import StandingStream
from tests.inprocess import running_app
from tests.raw_session import (
    ALICE,
    BOB,
    EVENT_STREAM,
    JSON,
    RawSession,
    guarded_config,
    lane_streams,
    media_type,
    next_message,
    opened_session,
)
from tests.support import fixture_server, write_config

pytestmark = pytest.mark.anyio

Sent = list[dict[str, Any]]


class _Client:
    """ASGI's side of one GET: what the stream sent, and the client's own messages (its request, a hang-up). With
    `slow_on`, a body holding those bytes is written only once `go_on` is set (a client not reading)."""

    def __init__(self, slow_on: bytes | None = None) -> None:
        self.sent: Sent = []
        self.slow_on = slow_on
        self.go_on = anyio.Event()
        self.writing_slowly = anyio.Event()
        self._changed = anyio.Event()
        self._inbox, self._receive = anyio.create_memory_object_stream[dict[str, Any]](10)
        self._inbox.send_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def receive(self) -> dict[str, Any]:
        return await self._receive.receive()

    async def send(self, message: Message) -> None:
        if self.slow_on is not None and self.slow_on in message.get("body", b""):
            self.writing_slowly.set()
            await self.go_on.wait()
        self.sent.append(dict(message))
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        self._inbox.close()
        self._receive.close()

    def hang_up(self) -> None:
        self._inbox.send_nowait({"type": "http.disconnect"})

    async def sent_until(self, condition: Callable[[Sent], bool]) -> None:
        with anyio.fail_after(5):
            while not condition(self.sent):
                await self._changed.wait()

    def bodies(self) -> list[bytes]:
        return [message["body"] for message in self.sent if message["type"] == "http.response.body"]

    def events(self) -> list[dict[str, Any]]:
        lines = b"".join(self.bodies()).decode().split("\r\n")
        return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]


def _notice(n: int) -> EventMessage:
    params = {"level": "info", "data": f"notice {n}"}
    return EventMessage(types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params=params))


@dataclass
class _Served:
    stream: StandingStream
    ended: anyio.Event


@asynccontextmanager
async def _serving(client: _Client, ping_seconds: float = 60) -> AsyncGenerator[_Served]:
    """The stream served to `client` while the block runs."""
    served = _Served(StandingStream(client.send), anyio.Event())

    async def serve() -> None:
        await served.stream.serve("session-1", client.receive, ping_seconds=ping_seconds)
        served.ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        yield served
        tg.cancel_scope.cancel()
    client.close()


async def _ended(served: _Served) -> None:
    with anyio.fail_after(5):
        await served.ended.wait()


async def test_messages_go_out_in_order_framed_as_the_sdk_frames_them_and_the_stream_ends_with_them() -> None:
    client = _Client()
    async with _serving(client) as served:
        for n in range(3):
            await served.stream.send(_notice(n))
        await served.stream.aclose()
        await _ended(served)

    start = client.sent[0]
    assert (start["type"], start["status"]) == ("http.response.start", 200)
    assert (b"content-type", b"text/event-stream") in start["headers"]
    assert (b"mcp-session-id", b"session-1") in start["headers"]
    assert client.bodies()[0].startswith(b"event: message\r\ndata: {")
    assert [event["params"]["data"] for event in client.events()] == ["notice 0", "notice 1", "notice 2"]
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_message_sent_before_the_response_started_waits_for_its_start_then_goes_in_order() -> None:
    client = _Client()
    stream = StandingStream(client.send)
    sent: list[int] = []

    async def router() -> None:  # the SDK's router may send as soon as the stream is put in place
        for n in range(3):
            await stream.send(_notice(n))
            sent.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(router)
        await anyio.wait_all_tasks_blocked()
        assert (client.sent, sent) == ([], [])  # the router waits, as on a full buffer, and nothing is written
        tg.start_soon(stream.serve, "session-1", client.receive)
        await client.sent_until(lambda sent: len(sent) == 4)
        stream.close()
    client.close()
    assert client.sent[0]["type"] == "http.response.start"
    assert [event["params"]["data"] for event in client.events()] == ["notice 0", "notice 1", "notice 2"]


async def test_a_message_waiting_for_a_response_that_never_starts_is_refused_when_the_stream_closes() -> None:
    client = _Client()
    stream = StandingStream(client.send)

    async def router() -> None:
        with pytest.raises(anyio.ClosedResourceError):  # the router then forgets the stream
            await stream.send(_notice(1))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(router)
            await anyio.wait_all_tasks_blocked()
            stream.close()  # as leaving `compat.standing_stream` does when the lane does not serve it after all
    client.close()
    assert client.sent == []


async def test_a_quiet_stream_is_pinged_with_comment_lines_and_messages_still_follow() -> None:
    client = _Client()
    async with _serving(client, ping_seconds=0.05) as served:
        await client.sent_until(lambda sent: sum(m.get("body") == b": ping\r\n\r\n" for m in sent) >= 2)
        await served.stream.send(_notice(1))
        await client.sent_until(lambda sent: any(b"notice 1" in m.get("body", b"") for m in sent))
    assert [event["params"]["data"] for event in client.events()] == ["notice 1"]


async def test_a_client_hanging_up_ends_the_stream_and_a_later_message_is_refused_without_a_write() -> None:
    client = _Client()
    async with _serving(client) as served:
        await served.stream.send(_notice(1))
        await client.sent_until(lambda sent: len(sent) == 2)
        client.hang_up()
        await _ended(served)
        with pytest.raises(anyio.ClosedResourceError):  # the SDK's router then forgets the stream
            await served.stream.send(_notice(2))
    assert len(client.sent) == 2  # the start and the one message: nothing more is written to a client gone


async def test_the_session_closing_its_stream_ends_the_response() -> None:
    client = _Client()
    async with _serving(client) as served:
        await client.sent_until(lambda sent: len(sent) == 1)
        served.stream.close()  # as the SDK's `close_standalone_sse_stream` and `terminate` do
        await _ended(served)
        with pytest.raises(anyio.ClosedResourceError):
            await served.stream.send(_notice(1))
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_stream_closed_while_a_message_is_being_written_ends_only_after_that_message() -> None:
    client = _Client(slow_on=b"notice 1")
    async with _serving(client) as served, anyio.create_task_group() as tg:
        await client.sent_until(lambda sent: len(sent) == 1)
        tg.start_soon(served.stream.send, _notice(1))
        with anyio.fail_after(5):
            await client.writing_slowly.wait()
        served.stream.close()
        await anyio.wait_all_tasks_blocked()
        assert not served.ended.is_set()
        assert client.sent[-1]["type"] == "http.response.start"  # no end of the response before the message
        client.go_on.set()
        await _ended(served)
    assert [event["params"]["data"] for event in client.events()] == ["notice 1"]
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_message_the_session_kept_as_an_event_carries_its_id_before_it() -> None:
    client = _Client()
    async with _serving(client) as served:
        notice = _notice(1)
        await served.stream.send(EventMessage(notice.message, event_id="stream-1:7"))
        await client.sent_until(lambda sent: len(sent) == 2)
    assert client.bodies()[0].startswith(b"id: stream-1:7\r\nevent: message\r\ndata: {")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state")})


@pytest.fixture
def guarded(tmp_path: Path) -> Path:
    return guarded_config(tmp_path)


# The session's standing event stream (GET): taken by the lane once the session is established.


async def test_a_sessions_standing_stream_takes_the_lane_carries_its_notices_and_is_one_per_session(
    config: Path,
) -> None:
    async with opened_session(config) as (proxy, http, session):
        listen = session.headers | {"Accept": EVENT_STREAM}
        async with http.stream("GET", proxy.url, headers=listen) as stream:
            assert (stream.status_code, media_type(stream)) == (200, EVENT_STREAM)
            assert stream.headers["mcp-session-id"] == session.headers["Mcp-Session-Id"]
            assert await lane_streams(proxy, config) == 1
            grown = await session.call_tool(2, "state_grow", {"name": "fresh"})
            assert grown.status_code == 200
            with anyio.fail_after(10):
                notice = await next_message(stream.aiter_lines())
            assert notice == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
            second = await http.get(proxy.url, headers=listen)
            assert second.status_code == 409  # the SDK's own refusal of a second stream
        # Once the client hung up, the session takes a new stream (the lane let go of the old one).
        with anyio.fail_after(10):
            while True:
                async with http.stream("GET", proxy.url, headers=listen) as again:
                    if again.status_code == 200:
                        break
                    assert again.status_code == 409
        assert await lane_streams(proxy, config) == 2


async def test_a_standing_stream_ends_when_its_session_is_deleted(config: Path) -> None:
    async with opened_session(config) as (proxy, http, session):
        async with http.stream("GET", proxy.url, headers=session.headers | {"Accept": EVENT_STREAM}) as stream:
            assert stream.status_code == 200
            deleted = await http.delete(proxy.url, headers=session.headers)
            assert deleted.status_code == 200
            with anyio.fail_after(10):
                body = [line async for line in stream.aiter_lines()]
        assert body == []
        assert await lane_streams(proxy, config) == 1


async def test_a_standing_stream_from_a_foreign_origin_or_without_event_streams_is_refused_as_the_sdk_refuses_it(
    config: Path,
) -> None:
    async with opened_session(config) as (proxy, http, session):
        foreign = await http.get(
            proxy.url, headers=session.headers | {"Accept": EVENT_STREAM, "Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        json_only = await http.get(proxy.url, headers=session.headers | {"Accept": JSON})
        assert json_only.status_code == 406
        assert await lane_streams(proxy, config) == 0
        async with http.stream("GET", proxy.url, headers=session.headers | {"Accept": EVENT_STREAM}) as stream:
            assert stream.status_code == 200
        assert await lane_streams(proxy, config) == 1


async def test_a_resumption_the_proxy_cannot_replay_gets_a_fresh_standing_stream_not_a_500(config: Path) -> None:
    # The proxy keeps no events, so nothing can be replayed; the SDK's transport answered such a GET with nothing.
    async with opened_session(config) as (proxy, http, session):
        resume = session.headers | {"Accept": EVENT_STREAM, "Last-Event-ID": "stream-1:7"}
        async with http.stream("GET", proxy.url, headers=resume) as resumed:
            assert (resumed.status_code, media_type(resumed)) == (200, EVENT_STREAM)
            grown = await session.call_tool(2, "state_grow", {"name": "fresh"})
            assert grown.status_code == 200
            with anyio.fail_after(10):
                notice = await next_message(resumed.aiter_lines())
            assert notice == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
        assert await lane_streams(proxy, config) == 1


async def test_another_principal_cannot_listen_on_a_session_it_did_not_open(guarded: Path) -> None:
    async with running_app(guarded) as proxy, httpx2.AsyncClient(timeout=30) as http:
        alice = RawSession(http, proxy.url)
        alice.headers["Authorization"] = f"Bearer {ALICE}"
        await alice.open()
        listen = alice.headers | {"Accept": EVENT_STREAM}
        bobs_try = await http.get(proxy.url, headers=listen | {"Authorization": f"Bearer {BOB}"})
        unknown = await http.get(
            proxy.url, headers=listen | {"Authorization": f"Bearer {BOB}", "Mcp-Session-Id": "0" * 32}
        )
        assert (bobs_try.status_code, bobs_try.text) == (404, unknown.text)
        anonymous = await http.get(proxy.url, headers=listen | {"Authorization": ""})
        assert anonymous.status_code == 401
        assert await lane_streams(proxy, guarded) == 0
        async with http.stream("GET", proxy.url, headers=listen) as stream:
            assert (stream.status_code, media_type(stream)) == (200, EVENT_STREAM)
            assert await lane_streams(proxy, guarded) == 1
