"""Both protocol eras keep their sessions: handshake clients by connection, 2026-07-28 clients by explicit key.

The proxy runs in this process (`running_app`) with the fixture upstream in memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import MCPError, types
from mcp.client.session import ClientRequestContext
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from tests.inprocess import running_app
from tests.support import connect, fixture_server, structured, wait_until, write_config

pytestmark = pytest.mark.anyio


async def test_sdk_client_in_auto_mode_lands_on_the_handshake_and_keeps_its_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url, mode="auto") as client:
        assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        await client.call_tool("state_remember", {"value": "one"})
        await client.call_tool("state_remember", {"value": "two"})
        assert structured(await client.call_tool("state_recall", {})) == ["one", "two"]


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


async def test_2026_requests_without_a_key_get_a_fresh_ephemeral_session_each_call(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url, mode="2026-07-28") as client:
        live_before = proxy.live_upstreams()
        assert structured(await client.call_tool("state_remember", {"value": "forgotten"})) == ["forgotten"]
        assert structured(await client.call_tool("state_recall", {})) == []
        ephemeral = structured(await client.call_tool("state_whoami", {}))
        # The ephemeral session's upstream closed right after its one call; only the catalog session is left.
        await wait_until(lambda: not proxy.upstreams.is_alive(ephemeral), what="the ephemeral session to close")
        assert proxy.live_upstreams() == live_before


async def test_a_2026_client_asked_for_sampling_gets_a_clear_error_naming_the_era(tmp_path: Path) -> None:
    async def sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.ErrorData:
        raise AssertionError("a 2026-07-28 client can never be asked")

    config = write_config(tmp_path, {"state": fixture_server("state")})
    headers = {"X-MCPStore-Session": "modern-sampling"}
    async with (
        running_app(config) as proxy,
        connect(proxy.url, mode="2026-07-28", headers=headers, sampling_callback=sampling) as client,
    ):
        with pytest.raises(MCPError, match="2026-07-28, which has no server-to-client requests"):
            await client.call_tool("state_ask", {"prompt": "anyone?"})


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
