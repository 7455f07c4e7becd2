"""Agent scopes over MCP: `/agents/{id}/mcp` or the `X-MCPStore-Agent` header select an agent's view.

Services from the config are seen by every agent; a service added for an agent is seen by that agent only;
a session id names a different session in each agent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from tests.conversation import structured
from tests.inprocess import InProcessProxy, running_app
from tests.support import admin, connect, fixture_server, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncGenerator[InProcessProxy]:
    config = write_config(tmp_path, {"state": fixture_server("state")}, allow_stdio_services_via_api=True)
    async with running_app(config) as running:
        added = await admin(running.port, "POST", "/services?agent=team1", {"name": "private", **fixture_server("p")})
        assert added.status_code == 200, added.text
        ready = await admin(running.port, "POST", "/services/private/wait?agent=team1&timeout=60")
        assert ready.json()["state"] == "ready", ready.text
        yield running


def agent_url(proxy: InProcessProxy, agent: str) -> str:
    return proxy.url.replace("/mcp", f"/agents/{agent}/mcp")


async def tool_names(url: str, headers: dict[str, str] | None = None) -> set[str]:
    async with connect(url, headers=headers) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


async def test_an_agents_own_service_is_seen_on_its_path_and_with_its_header_only(proxy: InProcessProxy) -> None:
    own = await tool_names(agent_url(proxy, "team1"))
    assert "private_whoami" in own
    assert "state_whoami" in own  # the config's services are everyone's
    assert "private_whoami" in await tool_names(proxy.url, {"X-MCPStore-Agent": "team1"})

    for elsewhere in (await tool_names(proxy.url), await tool_names(agent_url(proxy, "team2"))):
        assert "state_whoami" in elsewhere
        assert not any(name.startswith("private_") for name in elsewhere)

    async with connect(agent_url(proxy, "team2")) as outsider:
        with pytest.raises(MCPError, match="private_whoami"):
            await outsider.call_tool("private_whoami", {})
    assert [service["name"] for service in (await admin(proxy.port, "GET", "/services?agent=team2")).json()] == [
        "state"
    ]


async def test_the_same_session_id_is_a_separate_session_in_each_agent(proxy: InProcessProxy) -> None:
    places: dict[str, tuple[str, dict[str, str]]] = {
        "team1 path": (agent_url(proxy, "team1"), {}),
        "team2 path": (agent_url(proxy, "team2"), {}),
        "team2 header": (proxy.url, {"X-MCPStore-Agent": "team2"}),
        "store": (proxy.url, {}),
    }
    for place, (url, headers) in places.items():
        if place == "team2 header":
            continue  # the same agent as "team2 path": it must see that session, checked below
        async with connect(url, headers={**headers, "X-MCPStore-Session": "task"}) as client:
            await client.call_tool("state_remember", {"value": place})

    recalled: dict[str, list[str]] = {}
    for place, (url, headers) in places.items():  # new connections: the named sessions outlive them
        async with connect(url, headers={**headers, "X-MCPStore-Session": "task"}) as client:
            recalled[place] = structured(await client.call_tool("state_recall", {}))
    assert recalled == {
        "team1 path": ["team1 path"],
        "team2 path": ["team2 path"],
        "team2 header": ["team2 path"],
        "store": ["store"],
    }

    listed = {
        agent: {
            session["session_id"] for session in (await admin(proxy.port, "GET", f"/sessions?agent={agent}")).json()
        }
        for agent in ("team1", "team2", "")
    }
    assert listed == {"team1": {"task"}, "team2": {"task"}, "": {"task"}}


async def test_a_malformed_agent_id_is_refused_with_the_rule(proxy: InProcessProxy) -> None:
    initialize: dict[str, object] = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "X-MCPStore-Agent": "no spaces allowed"}
    async with httpx2.AsyncClient() as http:
        refused = await http.post(proxy.url, json=initialize, headers=headers)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == INVALID_PARAMS
    assert re.search(r"agent id 'no spaces allowed' must be 1 to 64 letters.*team_1", error["message"])
