"""Both protocol eras keep their sessions and get the whole protocol.

Handshake clients are keyed by their connection; a 2026-07-28 client by its
explicit key, else its principal's own session. An upstream's questions reach a
2026-07-28 client as `input_required` rounds, and what upstreams say outside a
call reaches it on `subscriptions/listen`. The proxy runs in this process
(`running_app`) with the fixture upstream in memory; the clients are the MCP SDK's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import MCPError, types
from mcp.client.session import ClientRequestContext
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import FileUrl

from tests.conversation import answering_sampling, structured
from tests.inprocess import running_app
from tests.support import connect, fixture_server, write_config

pytestmark = pytest.mark.anyio


async def test_sdk_client_in_auto_mode_speaks_2026_and_keeps_its_state_across_calls(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url, mode="auto") as client:
        assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
        await client.call_tool("state_remember", {"value": "one"})
        await client.call_tool("state_remember", {"value": "two"})
        assert structured(await client.call_tool("state_recall", {})) == ["one", "two"]


async def test_sdk_client_in_legacy_mode_keeps_its_own_connection_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with (
        running_app(config) as proxy,
        connect(proxy.url, mode="legacy") as first,
        connect(proxy.url, mode="legacy") as second,
    ):
        assert first.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        await first.call_tool("state_remember", {"value": "mine"})
        assert structured(await first.call_tool("state_recall", {})) == ["mine"]
        assert structured(await second.call_tool("state_recall", {})) == []


async def test_sdk_client_in_auto_mode_with_a_session_header_uses_2026_and_keeps_state_across_clients(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    headers = {"X-MCPStore-Session": "modern-task"}
    async with running_app(config) as proxy:
        async with connect(proxy.url, mode="auto", headers=headers) as first:
            assert first.protocol_version in MODERN_PROTOCOL_VERSIONS
            await first.call_tool("state_remember", {"value": "persisted"})
            assert structured(await first.call_tool("state_recall", {})) == ["persisted"]
            first_instance = structured(await first.call_tool("state_whoami", {}))
        async with connect(proxy.url, mode="2026-07-28", headers=headers) as second:
            assert structured(await second.call_tool("state_recall", {})) == ["persisted"]
            assert structured(await second.call_tool("state_whoami", {})) == first_instance


async def test_2026_requests_with_a_session_argument_share_state(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url, mode="2026-07-28") as client:
        assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
        await client.call_tool("state_remember", {"value": "x", "session_id": "by-arg"})
        assert structured(await client.call_tool("state_recall", {"session_id": "by-arg"})) == ["x"]


async def test_2026_requests_without_a_key_share_their_principals_session_across_clients(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        async with connect(proxy.url, mode="2026-07-28") as client:
            await client.call_tool("state_remember", {"value": "kept"})
            instance = structured(await client.call_tool("state_whoami", {}))
        async with connect(proxy.url, mode="2026-07-28") as again:
            assert structured(await again.call_tool("state_recall", {})) == ["kept"]
            assert structured(await again.call_tool("state_whoami", {})) == instance
        async with connect(proxy.url, mode="legacy") as handshake:
            assert structured(await handshake.call_tool("state_recall", {})) == []


async def test_a_2026_client_answers_an_upstreams_sampling_through_input_required_rounds(tmp_path: Path) -> None:
    asked: list[str] = []
    sampling = answering_sampling(asked)
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with (
        running_app(config) as proxy,
        connect(proxy.url, mode="2026-07-28", sampling_callback=sampling) as client,
    ):
        assert structured(await client.call_tool("state_ask", {"prompt": "the answer?"})) == "forty-two"
        assert structured(await client.call_tool("state_ask", {"prompt": "again?"})) == "forty-two"
    assert asked == ["the answer?", "again?"]


async def test_a_2026_client_answers_roots_and_elicitation_in_rounds_of_one_request(tmp_path: Path) -> None:
    async def roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///work/project"))])

    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url, mode="2026-07-28", list_roots_callback=roots) as client:
        assert structured(await client.call_tool("state_roots", {})) == ["file:///work/project"]


async def test_a_2026_client_that_did_not_declare_sampling_is_told_which_capability_is_missing(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url, mode="2026-07-28") as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("state_ask", {"prompt": "anyone?"})
    assert refused.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
    assert refused.value.error.data == {"requiredCapabilities": {"sampling": {}}}


async def test_a_2026_client_gets_log_entries_only_when_its_request_opts_in(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    entries: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        entries.append(str(params.data))

    async with running_app(config) as proxy:
        async with connect(proxy.url, mode="2026-07-28", logging_callback=on_log) as silent:
            assert structured(await silent.call_tool("state_chatter", {"tag": "quiet", "count": 3})) == "quiet"
        assert entries == []
        async with connect(proxy.url, mode="2026-07-28", logging_callback=on_log, log_level="info") as opted_in:
            await opted_in.call_tool("state_chatter", {"tag": "heard", "count": 3})
        assert entries == ["heard 1", "heard 2", "heard 3"]
