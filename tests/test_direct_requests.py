"""Requests the proxy sends upstream itself (`DirectRequests`), for its own client on one session.

Each test runs a real `UpstreamSession` with the fixture server in memory, and watches what is written to it.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError, types
from mcp.shared.message import SessionMessage

from mcpstore_proxy.compat import WriteStream
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.direct_requests import DirectRequests
from mcpstore_proxy.errors import UpstreamClosedError, UpstreamTimeoutError
from mcpstore_proxy.message_streams import MessageWriteStream
from mcpstore_proxy.relay import ClientCall, SessionRelay
from mcpstore_proxy.transports import TransportEvents, TransportFactory, TransportStreams
from tests.clock import LoopClock
from tests.memory import fixture_session
from tests.recorders import Journal, Recorder
from tests.support import wait_until

pytestmark = pytest.mark.anyio

_FIRST_DIRECT_ID = "mcpstore-2"
"""The first call's id: the handshake's `initialize` went out as `mcpstore-1`."""


class _Written:
    """Wraps a transport factory and keeps every message the session writes upstream."""

    def __init__(self) -> None:
        self.messages: list[types.JSONRPCMessage] = []

    def through(self, transports: TransportFactory) -> TransportFactory:
        def opened(
            upstream: str, config: UpstreamConfig, events: TransportEvents
        ) -> AbstractAsyncContextManager[TransportStreams]:
            return self._open(transports(upstream, config, events))

        return opened

    @asynccontextmanager
    async def _open(self, inner: AbstractAsyncContextManager[TransportStreams]) -> AsyncGenerator[TransportStreams]:
        async with inner as (read_stream, write_stream):
            yield read_stream, _Recording(write_stream, self.messages)

    def requests(self, method: str) -> list[types.JSONRPCRequest]:
        return [m for m in self.messages if isinstance(m, types.JSONRPCRequest) and m.method == method]

    def notices(self, method: str) -> list[types.JSONRPCNotification]:
        return [m for m in self.messages if isinstance(m, types.JSONRPCNotification) and m.method == method]


class _Recording(MessageWriteStream):
    def __init__(self, inner: WriteStream[SessionMessage], messages: list[types.JSONRPCMessage]) -> None:
        self._inner = inner
        self._messages = messages

    async def send(self, item: SessionMessage, /) -> None:
        self._messages.append(item.message)
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _call(journal: Journal, *, progress: bool = False) -> ClientCall:
    async def report(progress: float, total: float | None, message: str | None) -> None:
        journal.append(("progress", f"{progress:g}"))

    return ClientCall(
        stream=Recorder("call", journal), connection=Recorder("client", journal), progress=report if progress else None
    )


async def test_a_call_without_progress_goes_out_under_the_proxys_own_id_and_its_result_keeps_every_field() -> None:
    written = _Written()
    async with fixture_session(SessionRelay("up"), through=written.through) as session:
        result = await session.call_tool("rich", {}, _call([]))
    [request] = written.requests("tools/call")
    assert request.id == _FIRST_DIRECT_ID
    assert request.params == {"name": "rich", "arguments": {}}
    assert result["_meta"] == {"example.com/trace": "abc", "example.com/cost": 3}
    assert result["structuredContent"] == {"answer": 42, "nested": {"list": [1, 2, 3]}}
    assert result["content"][0] == {
        "type": "text",
        "text": "hello",
        "annotations": {"audience": ["user"], "priority": 0.5},
    }


async def test_a_call_that_asks_for_progress_goes_out_under_its_own_id_as_its_token_and_its_progress_is_reported() -> (
    None
):
    journal: Journal = []
    written = _Written()
    async with fixture_session(SessionRelay("up"), through=written.through) as session:
        await session.call_tool("chatter", {"tag": "t", "count": 2}, _call(journal, progress=True))
        journal.append(("call", "result"))
    [request] = written.requests("tools/call")
    assert request.id == _FIRST_DIRECT_ID
    assert request.params is not None
    assert request.params["_meta"] == {"progressToken": _FIRST_DIRECT_ID}
    assert [entry for entry in journal if entry[0] == "progress" or entry[1] == "result"] == [
        ("progress", "1"),
        ("progress", "2"),
        ("call", "result"),
    ]


async def test_a_direct_calls_log_entries_reach_its_caller_before_its_result() -> None:
    journal: Journal = []
    async with fixture_session(SessionRelay("up")) as session:
        result = await session.call_tool("chatter", {"tag": "t", "count": 3}, _call(journal))
        journal.append(("call", "result"))
    assert result["structuredContent"] == {"result": "t"}
    assert journal == [("call", "log t 1"), ("call", "log t 2"), ("call", "log t 3"), ("call", "result")]


async def test_direct_calls_and_listings_share_a_session_and_each_gets_its_own_answer() -> None:
    results: dict[str, Any] = {}
    async with fixture_session(SessionRelay("up")) as session:

        async def echo(text: str) -> None:
            results[text] = (await session.call_tool("echo", {"text": text}, _call([])))["structuredContent"]

        async def listing() -> None:
            results["tools"] = {tool.name for tool in await session.list_all("tools")}

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(echo, f"text {n}")
            tg.start_soon(listing)
    assert {text: results[text] for text in results if text != "tools"} == {
        f"text {n}": {"result": f"text {n}"} for n in range(20)
    }
    assert {"echo", "rich", "chatter"} <= results["tools"]


async def test_an_upstreams_error_answer_to_a_direct_request_arrives_as_its_own_error() -> None:
    async with fixture_session(SessionRelay("up")) as session:
        with pytest.raises(MCPError) as raised:
            await session.request(types.GetPromptRequest(params=types.GetPromptRequestParams(name="no-such-prompt")))
    assert "no-such-prompt" in raised.value.error.message
    assert raised.value.error.code != types.CONNECTION_CLOSED


async def test_an_abandoned_direct_call_is_cancelled_upstream_and_the_session_goes_on() -> None:
    written = _Written()
    with tempfile.TemporaryDirectory() as directory:
        started, cancelled = Path(directory, "started"), Path(directory, "cancelled")
        async with fixture_session(SessionRelay("up"), through=written.through) as session:
            async with anyio.create_task_group() as tg:
                arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
                tg.start_soon(session.call_tool, "sleep", arguments, _call([]))
                await wait_until(started.exists, what="the upstream to start the call")
                tg.cancel_scope.cancel()
            await wait_until(cancelled.exists, what="the upstream to cancel the call")
            after = await session.call_tool("echo", {"text": "still here"}, _call([]))
    [notice] = written.notices("notifications/cancelled")
    assert notice.params is not None
    assert notice.params["requestId"] == _FIRST_DIRECT_ID
    assert after["structuredContent"] == {"result": "still here"}


async def test_a_direct_call_past_its_deadline_times_out_is_cancelled_upstream_and_the_session_goes_on() -> None:
    written = _Written()
    with tempfile.TemporaryDirectory() as directory:
        started, cancelled = Path(directory, "started"), Path(directory, "cancelled")
        arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
        relay = SessionRelay("up")
        async with fixture_session(relay, through=written.through, call_timeout_seconds=0.5) as session:
            with pytest.raises(UpstreamTimeoutError, match="call_timeout_seconds"):
                await session.call_tool("sleep", arguments, _call([]))
            await wait_until(cancelled.exists, what="the upstream to cancel the call")
            after = await session.call_tool("echo", {"text": "still here"}, _call([]))
        assert await anyio.Path(started).exists()
    [notice] = written.notices("notifications/cancelled")
    assert notice.params is not None
    assert notice.params["requestId"] == _FIRST_DIRECT_ID
    assert after["structuredContent"] == {"result": "still here"}


async def test_a_direct_call_whose_upstream_goes_away_fails_saying_the_connection_closed() -> None:
    async with fixture_session(SessionRelay("up")) as session:
        with pytest.raises(UpstreamClosedError, match="closed the connection"):
            await session.call_tool("crash", {}, _call([]))


class _Unanswered(MessageWriteStream):
    """An upstream that takes every request and answers none by itself: the test answers, with `take_raw`."""

    def __init__(self) -> None:
        self.sent: list[types.JSONRPCMessage] = []
        self.arrived = anyio.Event()

    async def send(self, item: SessionMessage, /) -> None:
        self.sent.append(item.message)
        self.arrived.set()

    async def aclose(self) -> None:
        return


async def test_requests_with_different_deadlines_each_time_out_at_their_own() -> None:
    upstream = _Unanswered()
    requests = DirectRequests(upstream)
    outcomes: dict[str, object] = {}

    async def ask(name: str, timeout: float) -> None:
        try:
            outcomes[name] = await requests.request("tools/call", {"name": name}, timeout=timeout)
        except TimeoutError:
            outcomes[name] = "timed out"

    with LoopClock() as clock, anyio.fail_after(6 + 10):  # on the moved clock: 10 s of wall time
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "patient", 60)
            tg.start_soon(ask, "hasty", 5)
            await anyio.wait_all_tasks_blocked()
            await clock.advance(4)
            assert outcomes == {}  # neither deadline has come

            await clock.advance(2)
            assert outcomes == {"hasty": "timed out"}  # the patient one's deadline is far off: it still waits

            patient = next(
                m for m in upstream.sent if isinstance(m, types.JSONRPCRequest) and m.params == {"name": "patient"}
            )
            assert requests.take_raw({"jsonrpc": "2.0", "id": patient.id, "result": {"content": []}})

    assert outcomes == {"hasty": "timed out", "patient": {"content": []}}
    requests.close()


async def test_a_deadline_is_kept_after_an_earlier_request_was_answered_in_time() -> None:
    upstream = _Unanswered()
    requests = DirectRequests(upstream)
    outcomes: list[object] = []

    async def ask_again() -> None:
        try:
            outcomes.append(await requests.request("ping", None, timeout=30))
        except TimeoutError:
            outcomes.append("timed out")

    with LoopClock() as clock, anyio.fail_after(31 + 10):  # on the moved clock: 10 s of wall time
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(requests.request, "ping", None, timeout=10))
            await upstream.arrived.wait()
            first = upstream.sent[0]
            assert isinstance(first, types.JSONRPCRequest)
            assert requests.take_raw({"jsonrpc": "2.0", "id": first.id, "result": {}})  # answered in time
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_again)
            await anyio.wait_all_tasks_blocked()
            await clock.advance(11)  # past the first request's deadline, which is no longer due
            assert outcomes == []  # not failed early

            await clock.advance(20)
            assert outcomes == ["timed out"]
    requests.close()


async def test_a_request_still_waiting_when_the_session_ends_fails_saying_the_connection_closed() -> None:
    upstream = _Unanswered()
    requests = DirectRequests(upstream)

    async def end_once_sent() -> None:
        await upstream.arrived.wait()
        requests.close()

    codes: list[int] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(end_once_sent)
            with pytest.raises(MCPError) as ended:
                await requests.request("ping", None, timeout=60)
            codes.append(ended.value.error.code)

    assert codes == [types.CONNECTION_CLOSED]
    with pytest.raises(MCPError):
        await requests.request("ping", None, timeout=60)  # and so does any request sent after
