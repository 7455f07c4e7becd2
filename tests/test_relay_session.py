"""`SessionRelay`, per session: resource updates and list changes reach the owning connection or the
subscribers, progress reaches the caller's own reporter, and a forward that started before a result is delivered
before it. The last tests put a real upstream (the fixture server, in memory) behind a real `UpstreamSession`, so
the SDK's own callbacks drive the relay.

The downstream clients are `Recorder`s (tests/recorders.py), which write what reaches them into a shared journal.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from mcp import MCPError, types

from mcpstore_proxy.relay import ClientCall, SessionRelay
from tests.memory import fixture_session
from tests.recorders import Journal, Recorder, log, serving

pytestmark = pytest.mark.anyio

# What concerns the session rather than a call.


async def test_resource_updates_go_to_the_owning_connection_under_the_exposed_uri() -> None:
    journal: Journal = []
    relay = SessionRelay("up", exposed_uri=lambda uri: f"{uri}?via=up")
    updated = types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri="memo://a"))
    async with serving(relay, ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
        await relay.on_message(updated)
    assert journal == [("client", "updated memo://a?via=up")]


async def test_resource_updates_go_to_the_subscribers_when_someone_keeps_them() -> None:
    journal: Journal = []
    delivered: list[str] = []
    relay = SessionRelay("up", exposed_uri=lambda uri: f"{uri}?via=up")

    async def deliver(notification: types.ResourceUpdatedNotification) -> None:
        delivered.append(notification.params.uri)

    relay.on_resource_updated = deliver
    async with serving(relay, ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
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
    async with serving(relay, ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
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
    async with serving(relay, ClientCall(stream=Recorder("call", journal), connection=Recorder("client", journal))):
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
            async with serving(relay, ClientCall(stream=stream, connection=None)):
                # The SDK hands each notification to a task of its own, which may still be running at the result.
                tg.start_soon(relay.on_message, log("before the result"))
                await stream.entered.wait()
                tg.start_soon(open_the_gate_once_everyone_waits)
            journal.append(("call", "result"))
    assert journal == [("test", "gate opened"), ("call", "log before the result"), ("call", "result")]


async def test_a_result_with_no_forward_pending_is_not_held_back() -> None:
    relay = SessionRelay("up")
    with anyio.fail_after(1):  # far below the relay's bound on waiting for forwards
        async with serving(relay, ClientCall(stream=Recorder("call", []), connection=None)):
            await anyio.lowlevel.checkpoint()


# Behind a real upstream session.


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
