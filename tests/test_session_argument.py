"""A tool that declares its own `session_id` keeps it; callers name the proxy's session under the alias instead.

FastMCP 4's `SessionProvider` is the real case: its tools take a required
`session_id` minted by its own `create_session`, kept in the memory of the
upstream process. Behind the proxy, that process is the proxy session's, so
both kinds of session must be nameable in one call: the tool's `session_id`,
and the proxy's `mcpstore_session_id` (`session_argument_alias`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import types

from tests.conversation import structured
from tests.inprocess import running_app
from tests.support import FIXTURES, connect, fixture_server, write_config

pytestmark = pytest.mark.anyio

FASTMCP_SERVER = FIXTURES / "fastmcp_sessions_server.py"


def notes_server() -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(FASTMCP_SERVER)]}


def text_of(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


async def test_a_tool_with_its_own_session_id_offers_the_proxy_session_under_the_alias(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", "--session-arg-tool")})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        tagged = tools["state_tagged"].input_schema["properties"]
        assert tagged["session_id"] == {"title": "Session Id", "type": "string"}
        assert "proxy" in tagged["mcpstore_session_id"]["description"]
        assert "'session_id'" in tagged["mcpstore_session_id"]["description"]
        assert "mcpstore_session_id" not in tools["state_echo"].input_schema["properties"]

        await client.call_tool("state_remember", {"value": "named", "session_id": "k"})
        result = await client.call_tool("state_tagged", {"session_id": "mine", "mcpstore_session_id": "k"})
        assert structured(result) == "tag=mine"
        named = structured(await client.call_tool("state_whoami", {"session_id": "k"}))
        own = structured(await client.call_tool("state_whoami", {}))
        assert named != own


async def test_the_alias_is_configurable(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"state": fixture_server("state", "--session-arg-tool")},
        session_argument_alias="proxy_session",
    )
    async with running_app(config) as proxy, connect(proxy.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools["state_tagged"].input_schema["properties"]) == {"session_id", "proxy_session"}


async def test_a_fastmcp_session_provider_server_works_with_its_own_sessions_and_the_proxys(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"notes": notes_server()})
    async with running_app(config) as proxy:
        async with connect(proxy.url) as first:
            tools = {tool.name: tool for tool in (await first.list_tools()).tools}
            assert tools["notes_add_note"].input_schema["required"] == ["session_id", "text"]
            # FastMCP mints its session in the proxy session "work"; its id is only known in that process.
            minted = text_of(await first.call_tool("notes_create_session", {"session_id": "work"}))
            added = await first.call_tool(
                "notes_add_note", {"session_id": minted, "text": "a", "mcpstore_session_id": "work"}
            )
            assert structured(added) == ["a"]
            elsewhere = await first.call_tool("notes_add_note", {"session_id": minted, "text": "lost"})
            assert elsewhere.is_error  # the connection's own session is another process, which never minted it
        async with connect(proxy.url) as second:
            again = await second.call_tool(
                "notes_add_note", {"session_id": minted, "text": "b", "mcpstore_session_id": "work"}
            )
            assert structured(again) == ["a", "b"]
