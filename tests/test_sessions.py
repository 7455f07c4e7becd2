"""Each client keeps its own persistent upstream state; explicit keys survive reconnects; shared mode is shared.

All in process (`running_app`, upstreams in memory): whoami answers an upstream instance's identity, which
stands for the process a session would get.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from mcpstore_proxy.errors import SESSION_REFUSED
from tests.conversation import structured
from tests.inprocess import running_app
from tests.support import connect, fixture_server, write_config

pytestmark = pytest.mark.anyio


async def test_two_clients_keep_separate_state_across_calls(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url) as alice, connect(proxy.url) as bob:
        await alice.call_tool("state_remember", {"value": "alice-1"})
        await bob.call_tool("state_remember", {"value": "bob-1"})
        await alice.call_tool("state_remember", {"value": "alice-2"})

        assert structured(await alice.call_tool("state_recall", {})) == ["alice-1", "alice-2"]
        assert structured(await bob.call_tool("state_recall", {})) == ["bob-1"]
        alice_upstream = structured(await alice.call_tool("state_whoami", {}))
        bob_upstream = structured(await bob.call_tool("state_whoami", {}))
        assert alice_upstream != bob_upstream
        assert structured(await alice.call_tool("state_whoami", {})) == alice_upstream
        assert {alice_upstream, bob_upstream} <= proxy.live_upstreams()


async def test_explicit_key_in_header_brings_state_back_on_a_new_connection(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    headers = {"X-MCPStore-Session": "research-task"}
    async with running_app(config) as proxy:
        async with connect(proxy.url, headers=headers) as first:
            await first.call_tool("state_remember", {"value": "kept"})
            upstream = structured(await first.call_tool("state_whoami", {}))
        async with connect(proxy.url, headers=headers) as second:
            assert structured(await second.call_tool("state_recall", {})) == ["kept"]
            assert structured(await second.call_tool("state_whoami", {})) == upstream
        async with connect(proxy.url) as stranger:
            assert structured(await stranger.call_tool("state_recall", {})) == []


async def test_explicit_key_in_argument_brings_state_back_and_matches_the_header_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        async with connect(proxy.url) as first:
            await first.call_tool("state_remember", {"value": "by-argument", "session_id": "shared-notes"})
            assert structured(await first.call_tool("state_recall", {})) == []
        async with connect(proxy.url) as second:
            recalled = await second.call_tool("state_recall", {"session_id": "shared-notes"})
            assert structured(recalled) == ["by-argument"]
        async with connect(proxy.url, headers={"X-MCPStore-Session": "shared-notes"}) as by_header:
            assert structured(await by_header.call_tool("state_recall", {})) == ["by-argument"]


async def test_argument_key_wins_over_header_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url, headers={"X-MCPStore-Session": "h"}) as client:
        await client.call_tool("state_remember", {"value": "to-argument-key", "session_id": "a"})
        assert structured(await client.call_tool("state_recall", {})) == []
        assert structured(await client.call_tool("state_recall", {"session_id": "a"})) == ["to-argument-key"]


async def test_session_argument_is_injected_and_stripped_but_a_tool_declaring_it_keeps_its_own(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", "--session-arg-tool")})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["state_echo"].input_schema["properties"]["session_id"]["type"] == "string"
        assert "session_id" not in tools["state_echo"].input_schema.get("required", [])
        assert tools["state_tagged"].input_schema["required"] == ["session_id"]

        echoed = await client.call_tool("state_echo", {"text": "hi", "session_id": "k"})
        assert structured(echoed) == "hi"
        tagged = await client.call_tool("state_tagged", {"session_id": "mine"})
        assert structured(tagged) == "tag=mine"


async def test_shared_upstream_serves_every_client_from_one_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", session="shared")})
    async with running_app(config) as proxy, connect(proxy.url) as alice, connect(proxy.url) as bob:
        await alice.call_tool("state_remember", {"value": "from-alice"})
        await bob.call_tool("state_remember", {"value": "from-bob"})
        assert structured(await alice.call_tool("state_recall", {})) == ["from-alice", "from-bob"]
        upstream = structured(await alice.call_tool("state_whoami", {}))
        assert structured(await bob.call_tool("state_whoami", {})) == upstream
        assert proxy.live_upstreams() == {upstream}


async def test_a_new_session_over_the_cap_is_refused_naming_upstream_and_cap(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, max_sessions_per_upstream=2)
    async with running_app(config) as proxy, connect(proxy.url) as first, connect(proxy.url) as second:
        await first.call_tool("state_echo", {"text": "1"})
        await second.call_tool("state_echo", {"text": "2"})
        async with connect(proxy.url) as third:
            with pytest.raises(MCPError) as refused:
                await third.call_tool("state_echo", {"text": "3"})
        assert refused.value.code == SESSION_REFUSED
        assert "'state'" in refused.value.message
        assert "cap" in refused.value.message
        assert "2 sessions" in refused.value.message
        # Existing sessions are unaffected.
        assert structured(await first.call_tool("state_echo", {"text": "still"})) == "still"


async def test_concurrent_first_calls_with_one_key_share_one_upstream_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        before = proxy.live_upstreams()
        upstreams: list[int] = []

        async def whoami() -> None:
            upstreams.append(structured(await client.call_tool("state_whoami", {"session_id": "burst"})))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(whoami)
        assert len(upstreams) == 5
        assert len(set(upstreams)) == 1
        # No second instance was started and dropped by a losing racer.
        assert proxy.live_upstreams() == before | set(upstreams)
        assert len(proxy.upstreams.started) == len(before) + 1
