"""`SessionRelay`: what an upstream session starts (log entries, progress, resource updates, list changes,
sampling, elicitation, roots) reaches the downstream client that owns the session, in order, or is refused
with a clear error.

The downstream clients here are `Recorder`s, a small real implementation of the relay's `ClientChannel`
protocol that writes what reaches it into a shared journal. The last tests put a real upstream (the fixture
server, in memory) behind a real `UpstreamSession`, so the SDK's own callbacks drive the relay.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import anyio
import anyio.lowlevel
import pytest
from mcp import MCPError, types
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.shared.message import SessionMessage
from pydantic import BaseModel, FileUrl

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.relay import ClientCall, SessionRelay
from mcpstore_proxy.upstream import ClientCapability, UpstreamSession
from tests.memory import MemoryUpstreams
from tests.support import fixture_server

pytestmark = pytest.mark.anyio

_ResultT = TypeVar("_ResultT", bound=BaseModel)

DECLARES_ALL: Final = types.ClientCapabilities(
    sampling=types.SamplingCapability(), elicitation=types.ElicitationCapability(), roots=types.RootsCapability()
)
ANSWERS: Final[Sequence[BaseModel]] = (
    types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="sampled"), model="m"),
    types.ElicitResult(action="accept", content={"name": "Ada"}),
    types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///work"))]),
)

Journal = list[tuple[str, str]]
"""(who, what) in the order things reached the clients."""


class Recorder:
    """A downstream client as the relay sees it: writes every notification and request it gets into `journal`,
    and answers requests from `ANSWERS` (or with `refusal`, if set)."""

    def __init__(
        self,
        name: str,
        journal: Journal,
        *,
        capabilities: types.ClientCapabilities | None = DECLARES_ALL,
        accepts_requests: bool = True,
    ) -> None:
        self.name = name
        self.journal = journal
        self.capabilities = capabilities
        self.accepts_requests = accepts_requests
        self.refusal: MCPError | None = None
        self.gate: anyio.Event | None = None
        """When set, a notification waits for it (after `entered`) before it counts as delivered."""
        self.entered = anyio.Event()

    def __repr__(self) -> str:
        return f"<Recorder {self.name}>"

    async def notify(self, notification: types.ServerNotification) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.journal.append((self.name, describe(notification)))

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        self.journal.append((self.name, request.method))
        if self.refusal is not None:
            raise self.refusal
        return next(answer for answer in ANSWERS if isinstance(answer, result_type))


def describe(notification: types.ServerNotification) -> str:
    if isinstance(notification, types.LoggingMessageNotification):
        return f"log {notification.params.data}"
    if isinstance(notification, types.ResourceUpdatedNotification):
        return f"updated {notification.params.uri}"
    return notification.method


def log(text: str) -> types.LoggingMessageNotification:
    return types.LoggingMessageNotification(params=types.LoggingMessageNotificationParams(level="info", data=text))


def sampling_params() -> types.CreateMessageRequestParams:
    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text="hi"))
    return types.CreateMessageRequestParams(messages=[message], max_tokens=5)


@asynccontextmanager
async def upstream_context() -> AsyncGenerator[ClientRequestContext]:
    """The context the SDK passes the relay's callbacks (which the relay does not read)."""
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](1)
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage](1)
    try:
        yield ClientRequestContext(session=ClientSession(from_server, to_server), request_id=1)
    finally:
        for stream in (to_client, from_server, to_server, from_client):
            stream.close()


async def ask(relay: SessionRelay, capability: str) -> BaseModel | types.ErrorData:
    async with upstream_context() as context:
        if capability == "sampling":
            return await relay.sampling(context, sampling_params())
        if capability == "elicitation":
            params = types.ElicitRequestFormParams(message="name?", requested_schema={"type": "object"})
            return await relay.elicitation(context, params)
        return await relay.list_roots(context)


def refusal_of(answer: BaseModel | types.ErrorData) -> str:
    assert isinstance(answer, types.ErrorData), f"expected a refusal, got {answer!r}"
    assert answer.code == types.INVALID_REQUEST
    return answer.message


# Routing.


async def test_a_log_entry_during_calls_goes_to_the_stream_of_the_most_recent_call() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    first = ClientCall(stream=Recorder("first call", journal), connection=Recorder("first client", journal))
    second = ClientCall(stream=Recorder("second call", journal), connection=Recorder("second client", journal))
    async with relay.serving(first):
        await relay.on_message(log("a"))
        async with relay.serving(second):
            await relay.on_message(log("b"))
        await relay.on_message(log("c"))
    assert journal == [("first call", "log a"), ("second call", "log b"), ("first call", "log c")]


async def test_with_no_call_in_flight_a_log_entry_goes_to_the_connection_that_called_last() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    for name in ("alice", "bob"):
        async with relay.serving(
            ClientCall(stream=Recorder(f"{name}'s call", journal), connection=Recorder(name, journal))
        ):
            pass
    await relay.on_message(log("later"))
    assert journal == [("bob", "log later")]


async def test_a_call_without_a_connection_does_not_take_the_session_over() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    async with relay.serving(
        ClientCall(stream=Recorder("alice's call", journal), connection=Recorder("alice", journal))
    ):
        pass
    # A 2026-07-28 request over HTTP has no connection to own the session.
    async with relay.serving(ClientCall(stream=Recorder("modern call", journal), connection=None)):
        await relay.on_message(log("during"))
    await relay.on_message(log("after"))
    assert journal == [("modern call", "log during"), ("alice", "log after")]


async def test_with_no_client_at_all_notifications_are_dropped_and_requests_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mcpstore_proxy.relay")
    relay = SessionRelay("up")
    await relay.on_message(log("nobody hears this"))
    await relay.on_message(
        types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri="a://b"))
    )
    dropped = [record.getMessage() for record in caplog.records if record.getMessage().startswith("dropped")]
    assert len(dropped) == 2
    assert all(line.endswith("from upstream 'up': no client owns its session") for line in dropped)
    message = refusal_of(await ask(relay, "sampling"))
    assert "upstream 'up' asked for sampling" in message
    assert "no client holds its session" in message


async def test_progress_notifications_and_transport_faults_are_not_forwarded_as_messages() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    async with relay.serving(ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
        # Progress reaches the caller through `progress_for`; a transport fault ends the session elsewhere.
        progress = types.ProgressNotificationParams(progress_token=1, progress=1)
        await relay.on_message(types.ProgressNotification(params=progress))
        await relay.on_message(ConnectionError("the pipe broke"))
    assert journal == []


# Requests back to the client.


@pytest.mark.parametrize(
    ("capability", "method"),
    [("sampling", "sampling/createMessage"), ("elicitation", "elicitation/create"), ("roots", "roots/list")],
)
async def test_a_request_is_asked_of_the_calls_stream_and_its_answer_returned(capability: str, method: str) -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    call = ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))
    async with relay.serving(call):
        answer = await ask(relay, capability)
    assert journal == [("call", method)]
    assert answer in ANSWERS


async def test_with_no_call_in_flight_the_connection_that_called_last_is_asked() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    async with relay.serving(ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
        pass
    answer = await ask(relay, "roots")
    assert journal == [("client", "roots/list")]
    assert isinstance(answer, types.ListRootsResult)


@pytest.mark.parametrize("capability", ["sampling", "elicitation", "roots"])
async def test_a_client_that_did_not_declare_a_capability_is_refused_naming_it(capability: str) -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    undeclared = Recorder("call", journal, capabilities=types.ClientCapabilities())
    async with relay.serving(ClientCall(stream=undeclared, connection=None)):
        message = refusal_of(await ask(relay, capability))
    assert message == f"upstream 'up' asked for {capability}, which this session's client did not declare"
    assert journal == []  # the client was never asked


async def test_a_client_with_no_capabilities_at_all_is_refused() -> None:
    relay = SessionRelay("up")
    async with relay.serving(ClientCall(stream=Recorder("call", [], capabilities=None), connection=None)):
        assert "did not declare" in refusal_of(await ask(relay, "sampling"))


async def test_a_2026_07_28_client_cannot_be_asked_and_the_error_names_the_era() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    modern = Recorder("modern call", journal, accepts_requests=False)
    async with relay.serving(ClientCall(stream=modern, connection=None)):
        message = refusal_of(await ask(relay, "elicitation"))
    assert "upstream 'up' asked for elicitation" in message
    assert "2026-07-28" in message
    assert "handshake era" in message
    assert journal == []


async def test_the_clients_own_error_answer_goes_back_to_the_upstream_unchanged() -> None:
    relay = SessionRelay("up")
    stream = Recorder("call", [])
    stream.refusal = MCPError(code=-1, message="the user declined")
    async with relay.serving(ClientCall(stream=stream, connection=None)):
        answer = await ask(relay, "sampling")
    assert answer == types.ErrorData(code=-1, message="the user declined")


# What concerns the session rather than a call.


async def test_resource_updates_go_to_the_owning_connection_under_the_exposed_uri() -> None:
    journal: Journal = []
    relay = SessionRelay("up", exposed_uri=lambda uri: f"{uri}?via=up")
    updated = types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri="memo://a"))
    async with relay.serving(ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
        await relay.on_message(updated)
    assert journal == [("client", "updated memo://a?via=up")]


async def test_resource_updates_go_to_the_subscribers_when_someone_keeps_them() -> None:
    journal: Journal = []
    delivered: list[str] = []
    relay = SessionRelay("up", exposed_uri=lambda uri: f"{uri}?via=up")

    async def deliver(notification: types.ResourceUpdatedNotification) -> None:
        delivered.append(notification.params.uri)

    relay.on_resource_updated = deliver
    async with relay.serving(ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
        await relay.on_message(
            types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri="memo://a"))
        )
    assert delivered == ["memo://a"]  # the upstream's own URI: the subscribers' keeper exposes it per client
    assert journal == []


@pytest.mark.parametrize(
    ("notice", "kind"),
    [
        (types.ToolListChangedNotification(), "tools"),
        (types.PromptListChangedNotification(), "prompts"),
        (types.ResourceListChangedNotification(), "resources"),
    ],
)
async def test_a_list_change_refreshes_the_listing_then_reaches_the_owning_connection(
    notice: types.ServerNotification, kind: str
) -> None:
    journal: Journal = []
    relay = SessionRelay("up")

    async def refresh(changed: str) -> None:
        journal.append(("listings", f"refresh {changed}"))

    relay.on_list_changed = refresh
    async with relay.serving(ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
        await relay.on_message(notice)
    assert journal == [("listings", f"refresh {kind}"), ("client", notice.method)]


async def test_a_catalog_sessions_list_change_refreshes_the_listing_without_telling_its_last_caller() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    refreshed: list[str] = []

    async def refresh(changed: str) -> None:
        refreshed.append(changed)

    relay.on_list_changed = refresh
    relay.announces_list_changes = False
    async with relay.serving(ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
        await relay.on_message(types.ToolListChangedNotification())
    assert refreshed == ["tools"]
    assert journal == []


# Progress and ordering.


async def test_progress_goes_to_the_callers_own_reporter_and_nowhere_without_a_token() -> None:
    reported: list[tuple[float, float | None, str | None]] = []

    async def report(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    relay = SessionRelay("up")
    assert relay.progress_for(None) is None
    assert relay.progress_for(ClientCall(stream=Recorder("call", []), connection=None)) is None
    forward = relay.progress_for(ClientCall(stream=Recorder("call", []), connection=None, progress=report))
    assert forward is not None
    await forward(1, 2, "half")
    assert reported == [(1, 2, "half")]


async def test_a_forward_that_started_before_the_result_is_delivered_before_it() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    stream = Recorder("call", journal)
    stream.gate = anyio.Event()

    async def open_the_gate_once_everyone_waits() -> None:
        await anyio.wait_all_tasks_blocked()
        journal.append(("test", "gate opened"))
        assert stream.gate is not None
        stream.gate.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with relay.serving(ClientCall(stream=stream, connection=None)):
                # The SDK hands each notification to a task of its own, which may still be running at the result.
                tg.start_soon(relay.on_message, log("before the result"))
                await stream.entered.wait()
                tg.start_soon(open_the_gate_once_everyone_waits)
            journal.append(("call", "result"))
    assert journal == [("test", "gate opened"), ("call", "log before the result"), ("call", "result")]


async def test_a_result_with_no_forward_pending_is_not_held_back() -> None:
    relay = SessionRelay("up")
    with anyio.fail_after(1):  # far below the relay's bound on waiting for forwards
        async with relay.serving(ClientCall(stream=Recorder("call", []), connection=None)):
            await anyio.lowlevel.checkpoint()


# Behind a real upstream session.


@asynccontextmanager
async def fixture_session(
    relay: SessionRelay, declared: frozenset[ClientCapability] = frozenset()
) -> AsyncGenerator[UpstreamSession]:
    """A real `UpstreamSession` with the fixture server (in memory) whose messages go through `relay`."""
    upstreams = MemoryUpstreams()
    session = UpstreamSession(
        "up",
        UpstreamConfig.model_validate(fixture_server("up")),
        start_timeout_seconds=10,
        relay=relay,
        declared=declared,
        transports=upstreams,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        try:
            with anyio.fail_after(10):
                await session.client()
                yield session
        finally:
            await session.aclose()
    assert not upstreams.live


async def test_a_real_upstreams_log_entries_and_progress_reach_the_caller_before_its_result() -> None:
    journal: Journal = []

    async def report(progress: float, total: float | None, message: str | None) -> None:
        journal.append(("progress", f"{progress:g}/{total:g} {message}"))

    relay = SessionRelay("up")
    call = ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal), progress=report)
    async with fixture_session(relay) as session:
        result = await session.call_tool("chatter", {"tag": "t", "count": 2}, call)
        journal.append(("call", "result"))
    assert result["structuredContent"] == {"result": "t"}
    # Each kind arrives in order, and every one of them before the result.
    assert [entry for entry in journal if entry[0] == "call"] == [
        ("call", "log t 1"),
        ("call", "log t 2"),
        ("call", "result"),
    ]
    assert [entry for entry in journal if entry[0] == "progress"] == [
        ("progress", "1/2 t step 1"),
        ("progress", "2/2 t step 2"),
    ]
    assert ("client", "log t 1") not in journal


async def test_a_real_upstreams_sampling_request_is_answered_by_the_client_whose_call_caused_it() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    call = ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))
    async with fixture_session(relay, frozenset({"sampling"})) as session:
        result = await session.call_tool("ask", {"prompt": "who?"}, call)
    assert result["structuredContent"] == {"result": "sampled"}
    assert journal == [("call", "sampling/createMessage")]


async def test_a_real_upstreams_sampling_request_from_an_undeclaring_client_fails_the_call_with_the_reason() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    call = ClientCall(stream=Recorder("call", journal, capabilities=types.ClientCapabilities()), connection=None)
    # The session declares sampling upstream (another client of a shared session might), this caller does not.
    async with fixture_session(relay, frozenset({"sampling"})) as session:
        with pytest.raises(MCPError) as refused:
            await session.call_tool("ask", {"prompt": "who?"}, call)
    # The upstream got the relay's refusal and failed its call with it.
    assert refused.value.message == "upstream 'up' asked for sampling, which this session's client did not declare"
    assert journal == []
