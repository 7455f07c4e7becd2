"""The proxy's own client for an upstream session (`LeanClient`), with the test as the upstream: each test reads
what the client writes and writes what an upstream would, as JSON-RPC messages on the SDK's memory streams.
Sessions through a real upstream (calls, progress, logs, sampling, roots) are tested throughout the suite, where
every in-memory and stdio upstream session runs on this client."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from mcp import MCPError, types
from mcp.shared.memory import create_client_server_memory_streams
from mcp.shared.message import SessionMessage

from mcpstore_proxy.client_capabilities import ClientCapability
from mcpstore_proxy.compat import ReadStream, WriteStream
from mcpstore_proxy.direct_requests import DirectRequests
from mcpstore_proxy.relay import ClientCall, SessionRelay
from mcpstore_proxy.transports import SessionReadStream
from mcpstore_proxy.upstream_client import LeanClient
from tests.recorders import Journal, Recorder, serving

pytestmark = pytest.mark.anyio

_INFO = types.Implementation(name="test", version="1")


@dataclass
class Upstream:
    """The upstream's side of the session: what the client wrote, and a way to write to it."""

    read: ReadStream[SessionMessage | Exception]
    write: WriteStream[SessionMessage]
    client: LeanClient
    requests: DirectRequests
    ended: anyio.Event = field(default_factory=anyio.Event)

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            item = await self.read.receive()
        assert isinstance(item, SessionMessage)
        return item.message.model_dump(by_alias=True, mode="json", exclude_none=True)

    async def say(self, message: dict[str, Any]) -> None:
        await self.write.send(
            SessionMessage(types.jsonrpc_message_adapter.validate_python({"jsonrpc": "2.0", **message}))
        )

    async def handshake(self, version: str = "2025-11-25") -> dict[str, Any]:
        """Answer the client's `initialize` (run `initialize` beside it); returns what the client sent."""
        request = await self.next()
        capabilities: dict[str, Any] = {"tools": {}, "logging": {}}
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": capabilities,
            "serverInfo": {"name": "up", "version": "1"},
        }
        await self.say({"id": request["id"], "result": result})
        return request


@asynccontextmanager
async def upstream(
    relay: SessionRelay, declared: frozenset[ClientCapability] = frozenset()
) -> AsyncGenerator[Upstream]:
    async with create_client_server_memory_streams() as ((client_read, client_write), (server_read, server_write)):
        requests = DirectRequests(client_write)
        ended = anyio.Event()
        observed = SessionReadStream(client_read, ended.set, requests)
        client = LeanClient(observed, requests, relay, declared, ended.set)
        async with client:
            yield Upstream(server_read, server_write, client, requests, ended)


async def _initialized(up: Upstream) -> tuple[types.InitializeResult, dict[str, Any], dict[str, Any]]:
    """The handshake, both sides: the client's result, its `initialize` and what it sent next."""
    answers: dict[str, Any] = {}

    async def initialize() -> None:
        answers["result"] = await up.client.initialize(_INFO, timeout=5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(initialize)
        answers["request"] = await up.handshake()
        answers["following"] = await up.next()
    return answers["result"], answers["request"], answers["following"]


def _asking_client() -> tuple[SessionRelay, ClientCall, Journal]:
    """A session's relay with a call in flight whose client records what it is asked (and answers it)."""
    journal: Journal = []
    call = ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))
    return SessionRelay("up"), call, journal


async def test_the_handshake_declares_what_the_sessions_client_declared_and_then_says_it_is_initialized() -> None:
    async with upstream(SessionRelay("up"), frozenset({"sampling", "roots"})) as up:
        result, request, following = await _initialized(up)
    assert request["method"] == "initialize"
    assert request["params"]["protocolVersion"] == "2025-11-25"
    assert request["params"]["capabilities"] == {"sampling": {}, "roots": {"listChanged": True}}
    assert request["params"]["clientInfo"] == {"name": "test", "version": "1"}
    assert following == {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert result.capabilities.logging is not None
    assert up.client.server_capabilities == result.capabilities


async def test_an_upstream_that_answers_with_a_version_outside_the_handshake_era_is_refused() -> None:
    failures: list[Exception] = []
    async with upstream(SessionRelay("up")) as up, anyio.create_task_group() as tg:

        async def initialize() -> None:
            try:
                await up.client.initialize(_INFO, timeout=5)
            except RuntimeError as error:
                failures.append(error)

        tg.start_soon(initialize)
        await up.handshake(version="2099-01-01")
    assert [str(error) for error in failures] == ["Unsupported protocol version from the server: 2099-01-01"]
    assert up.client.initialize_result is None


async def test_a_ping_from_the_upstream_is_answered_and_an_unknown_request_is_refused_as_method_not_found() -> None:
    async with upstream(SessionRelay("up")) as up:
        await _initialized(up)
        await up.say({"id": 7, "method": "ping"})
        assert await up.next() == {"jsonrpc": "2.0", "id": 7, "result": {}}
        await up.say({"id": "q", "method": "example/unknown", "params": {}})
        answer = await up.next()
    assert answer["id"] == "q"
    assert answer["error"]["code"] == types.METHOD_NOT_FOUND


async def test_a_question_the_client_declared_is_put_to_it_and_its_answer_goes_back_upstream() -> None:
    relay, call, journal = _asking_client()
    async with upstream(relay, frozenset({"roots"})) as up, serving(relay, call):
        await _initialized(up)
        await up.say({"id": 3, "method": "roots/list"})
        answer = await up.next()
    assert answer == {"jsonrpc": "2.0", "id": 3, "result": {"roots": [{"uri": "file:///work"}]}}
    assert journal == [("call", "roots/list")]


@pytest.mark.parametrize(
    ("method", "params", "refusal"),
    [
        ("roots/list", None, "List roots not supported"),
        (
            "elicitation/create",
            {"mode": "form", "message": "name?", "requestedSchema": {"type": "object", "properties": {}}},
            "Elicitation not supported",
        ),
    ],
)
async def test_a_question_the_client_did_not_declare_is_refused_as_the_sdks_client_refuses_it_without_asking(
    method: str, params: dict[str, Any] | None, refusal: str
) -> None:
    relay, call, journal = _asking_client()
    async with upstream(relay, frozenset({"sampling"})) as up, serving(relay, call):
        await _initialized(up)
        await up.say({"id": 4, "method": method, **({"params": params} if params else {})})
        answer = await up.next()
    assert answer["error"] == {"code": types.INVALID_REQUEST, "message": refusal}
    assert journal == []


async def test_a_question_the_upstream_withdraws_is_cancelled_and_never_answered() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    asking = Recorder("call", journal)
    waiting = anyio.Event()
    cancelled = anyio.Event()

    async def hold(request: types.ServerRequest, result_type: Any) -> Any:
        waiting.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    asking.request = hold  # type: ignore[method-assign]  # a client that does not answer
    call = ClientCall(stream=asking, connection=Recorder("client", journal))
    async with upstream(relay, frozenset({"roots"})) as up, serving(relay, call):
        await _initialized(up)
        await up.say({"id": 5, "method": "roots/list"})
        with anyio.fail_after(5):
            await waiting.wait()
        await up.say({"method": "notifications/cancelled", "params": {"requestId": 5}})
        with anyio.fail_after(5):
            await cancelled.wait()
        await up.say({"id": 6, "method": "ping"})  # answered next: nothing was written for the withdrawn one
        assert await up.next() == {"jsonrpc": "2.0", "id": 6, "result": {}}


async def test_the_upstreams_notifications_reach_the_call_in_flight_and_its_progress_the_request_that_asked() -> None:
    relay, call, journal = _asking_client()
    reports: list[tuple[float, float | None, str | None]] = []

    async def report(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    results: list[dict[str, Any]] = []
    async with upstream(relay) as up, serving(relay, call), anyio.create_task_group() as tg:
        await _initialized(up)

        async def request() -> None:
            results.append(await up.requests.request("tools/call", {"name": "t"}, timeout=5, on_progress=report))

        tg.start_soon(request)
        sent = await up.next()
        token = sent["params"]["_meta"]["progressToken"]
        assert token == sent["id"]
        await up.say({"method": "notifications/message", "params": {"level": "info", "data": "working"}})
        await up.say(
            {"method": "notifications/progress", "params": {"progressToken": token, "progress": 1, "total": 2}}
        )
        await up.say({"method": "notifications/progress", "params": {"progressToken": "other", "progress": 9}})
        await up.say({"id": sent["id"], "result": {"content": []}})
    assert results == [{"content": []}]
    assert reports == [(1.0, 2.0, None)]
    assert journal == [("call", "log working")]


async def test_the_end_of_the_upstreams_stream_is_reported_once_reading_stops() -> None:
    async with upstream(SessionRelay("up")) as up:
        await _initialized(up)
        await up.write.aclose()
        with anyio.fail_after(5):
            await up.ended.wait()
        with pytest.raises(MCPError):
            await up.requests.request("tools/list", None, timeout=5)


async def test_a_question_with_malformed_params_is_refused_as_invalid_without_asking_the_client() -> None:
    relay, call, journal = _asking_client()
    async with upstream(relay, frozenset({"sampling"})) as up, serving(relay, call):
        await _initialized(up)
        await up.say({"id": 8, "method": "sampling/createMessage", "params": {"maxTokens": "many"}})
        refused = await up.next()
        await up.say({"id": 9, "method": "roots/list"})  # undeclared: refused too, but not as malformed
        undeclared = await up.next()
    assert refused["error"]["code"] == types.INVALID_PARAMS
    assert "sampling/createMessage" in refused["error"]["message"]
    assert undeclared["error"]["code"] == types.INVALID_REQUEST
    assert journal == []


async def test_a_question_whose_answer_fails_is_answered_with_an_internal_error_not_left_waiting() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    asking = Recorder("call", journal)

    async def hung_up(request: types.ServerRequest, result_type: Any) -> Any:
        raise anyio.BrokenResourceError  # the client's connection went away while it was being asked

    asking.request = hung_up  # type: ignore[method-assign]
    call = ClientCall(stream=asking, connection=Recorder("client", journal))
    async with upstream(relay, frozenset({"roots"})) as up, serving(relay, call):
        await _initialized(up)
        await up.say({"id": 10, "method": "roots/list"})
        failed = await up.next()
        await up.say({"id": 11, "method": "ping"})  # the session goes on
        pinged = await up.next()
    assert failed["id"] == 10
    assert failed["error"]["code"] == types.INTERNAL_ERROR
    assert "roots/list" in failed["error"]["message"]
    assert pinged == {"jsonrpc": "2.0", "id": 11, "result": {}}
