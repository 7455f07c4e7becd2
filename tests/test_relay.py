"""`SessionRelay`, per call: what an upstream session starts (log entries, progress, sampling, elicitation,
roots) reaches the stream of the call that caused it, or the connection that called last, or is refused with a
clear error.

The downstream clients are `Recorder`s (tests/recorders.py), which write what reaches them into a shared journal.
tests/test_relay_session.py covers what concerns the session rather than one call, and ordering.
"""

from __future__ import annotations

import logging

import pytest
from mcp import MCPError, types

from mcpstore_proxy.relay import ClientCall, SessionRelay
from tests.recorders import ANSWERS, Journal, Recorder, ask, log, refusal_of, serving

pytestmark = pytest.mark.anyio


# Routing.


async def test_a_log_entry_during_calls_goes_to_the_stream_of_the_most_recent_call() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    first = ClientCall(stream=Recorder("first call", journal), connection=Recorder("first client", journal))
    second = ClientCall(stream=Recorder("second call", journal), connection=Recorder("second client", journal))
    async with serving(relay, first):
        await relay.on_message(log("a"))
        async with serving(relay, second):
            await relay.on_message(log("b"))
        await relay.on_message(log("c"))
    assert journal == [("first call", "log a"), ("second call", "log b"), ("first call", "log c")]


async def test_with_no_call_in_flight_a_log_entry_goes_to_the_connection_that_called_last() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    for name in ("alice", "bob"):
        async with serving(
            relay, ClientCall(stream=Recorder(f"{name}'s call", journal), connection=Recorder(name, journal))
        ):
            pass
    await relay.on_message(log("later"))
    assert journal == [("bob", "log later")]


async def test_a_call_without_a_connection_does_not_take_the_session_over() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    async with serving(
        relay, ClientCall(stream=Recorder("alice's call", journal), connection=Recorder("alice", journal))
    ):
        pass
    # A 2026-07-28 request over HTTP has no connection to own the session.
    async with serving(relay, ClientCall(stream=Recorder("modern call", journal), connection=None)):
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
    async with serving(relay, ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
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
    async with serving(relay, call):
        answer = await ask(relay, capability)
    assert journal == [("call", method)]
    assert answer in ANSWERS


async def test_with_no_call_in_flight_the_connection_that_called_last_is_asked() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    async with serving(relay, ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
        pass
    answer = await ask(relay, "roots")
    assert journal == [("client", "roots/list")]
    assert isinstance(answer, types.ListRootsResult)


@pytest.mark.parametrize("capability", ["sampling", "elicitation", "roots"])
async def test_a_client_that_did_not_declare_a_capability_is_refused_naming_it(capability: str) -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    undeclared = Recorder("call", journal, capabilities=types.ClientCapabilities())
    async with serving(relay, ClientCall(stream=undeclared, connection=None)):
        message = refusal_of(await ask(relay, capability))
    assert message == f"upstream 'up' asked for {capability}, which this session's client did not declare"
    assert journal == []  # the client was never asked


async def test_a_client_with_no_capabilities_at_all_is_refused() -> None:
    relay = SessionRelay("up")
    async with serving(relay, ClientCall(stream=Recorder("call", [], capabilities=None), connection=None)):
        assert "did not declare" in refusal_of(await ask(relay, "sampling"))


async def test_a_2026_07_28_client_cannot_be_asked_and_the_error_names_the_era() -> None:
    journal: Journal = []
    relay = SessionRelay("up")
    modern = Recorder("modern call", journal, accepts_requests=False)
    async with serving(relay, ClientCall(stream=modern, connection=None)):
        message = refusal_of(await ask(relay, "elicitation"))
    assert "upstream 'up' asked for elicitation" in message
    assert "2026-07-28" in message
    assert "handshake era" in message
    assert journal == []


async def test_the_clients_own_error_answer_goes_back_to_the_upstream_unchanged() -> None:
    relay = SessionRelay("up")
    stream = Recorder("call", [])
    stream.refusal = MCPError(code=-1, message="the user declined")
    async with serving(relay, ClientCall(stream=stream, connection=None)):
        answer = await ask(relay, "sampling")
    assert answer == types.ErrorData(code=-1, message="the user declined")
