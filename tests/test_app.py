"""The HTTP face: DNS-rebinding protection, the health page, listing without spawning, unknown tools.

In process (`running_app`): the real app served by uvicorn on a loopback port, upstreams in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import MCPError
from mcp.types import INVALID_PARAMS

from mcpstore_proxy.errors import SESSION_REFUSED
from tests.conversation import structured
from tests.inprocess import running_app
from tests.support import (
    ACCEPT,
    INITIALIZE,
    PROJECT_ROOT,
    connect,
    descendants,
    fixture_server,
    is_alive,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.anyio

FIXTURE_TOOLS = 13
"""How many tools tests/fixtures/stateful_server.py offers by default."""


async def post_initialize(url: str, **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.post(url, json=INITIALIZE, headers={**ACCEPT, **headers})


async def test_a_foreign_host_header_is_refused_with_421_and_a_foreign_origin_with_403(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        assert (await post_initialize(proxy.url, Host="attacker.example")).status_code == 421
        assert (await post_initialize(proxy.url, Origin="http://attacker.example")).status_code == 403
        allowed = await post_initialize(proxy.url, Origin=f"http://localhost:{proxy.port}")
        assert allowed.status_code == 200
        assert allowed.headers["mcp-session-id"]


async def test_configured_allowed_hosts_are_accepted(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, allowed_hosts=["proxy.internal:*"])
    async with running_app(config) as proxy:
        assert (await post_initialize(proxy.url, Host=f"proxy.internal:{proxy.port}")).status_code == 200
        assert (await post_initialize(proxy.url, Host=f"other.internal:{proxy.port}")).status_code == 421


async def test_the_status_page_reports_each_upstream_to_the_operator_and_health_only_says_ok(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"state": fixture_server("state"), "broken": fixture_server("broken", "--fail-start", "nope")}
    )
    async with running_app(config) as proxy, httpx2.AsyncClient() as http:
        status = (await http.get(f"http://127.0.0.1:{proxy.port}/admin/status")).json()
        assert status["upstreams"]["state"] == {
            "state": "ready",
            "tools": FIXTURE_TOOLS,
            "sessions": 0,
            "error": None,
            "detail": None,
            "transport": "stdio",
            "session_mode": "isolated",
            "clients": [],
        }
        assert status["upstreams"]["broken"]["state"] == "failed"
        assert status["upstreams"]["broken"]["detail"] == "its stderr said: nope"
        health = await http.get(f"http://127.0.0.1:{proxy.port}/healthz", headers={"Host": "attacker.example"})
        assert health.json() == {"status": "ok"}  # liveness names nothing that it serves


async def test_listing_tools_never_starts_a_client_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        catalog = proxy.live_upstreams()
        assert len(catalog) == 1
        async with connect(proxy.url) as first, connect(proxy.url) as second:
            for client in (first, second, first):
                assert len((await client.list_tools()).tools) == FIXTURE_TOOLS
            assert proxy.live_upstreams() == catalog
        assert proxy.upstreams.started == sorted(catalog)


async def test_an_unknown_tool_is_invalid_params(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("state_nonexistent", {})
        assert unknown.value.code == INVALID_PARAMS
        assert "state_nonexistent" in unknown.value.message


async def test_bundled_demo_config_gives_each_client_its_own_notes_and_one_shared_counter() -> None:
    # The demo upstreams are not fixtures: they run as real processes, children of this one.
    before = descendants(os.getpid())
    async with (
        running_app(PROJECT_ROOT / "config" / "proxy.yaml") as proxy,
        connect(proxy.url) as alice,
        connect(proxy.url) as bob,
    ):
        await alice.call_tool("notes_add_note", {"text": "alice's note"})
        await bob.call_tool("notes_add_note", {"text": "bob's note"})
        assert structured(await alice.call_tool("notes_list_notes", {})) == ["alice's note"]
        assert structured(await bob.call_tool("notes_list_notes", {})) == ["bob's note"]
        first = structured(await alice.call_tool("counter_increment", {}))
        assert structured(await bob.call_tool("counter_increment", {})) == first + 1
        started = descendants(os.getpid()) - before
        assert len(started) == 4  # the notes catalog, the shared counter, and each client's own notes
    await wait_until(lambda: not any(is_alive(pid) for pid in started), what=f"the demo processes {started} to exit")


async def test_a_burst_of_newcomers_at_the_session_limit_is_refused_by_the_proxy_naming_the_limit(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, max_downstream_sessions=5)
    async with running_app(config) as proxy, httpx2.AsyncClient(timeout=30) as http:
        answers: list[httpx2.Response] = []

        async def newcomer() -> None:
            answers.append(await http.post(proxy.url, json=INITIALIZE, headers=ACCEPT))

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(newcomer)
        admitted = [answer for answer in answers if answer.status_code == 200]
        refused = [answer.json()["error"] for answer in answers if answer.status_code != 200]
        assert len(admitted) == 5
        assert {answer.status_code for answer in answers} == {200, 503}
        # Every refusal is the proxy's own, however the burst interleaved: none is the SDK's bare "too many".
        assert {error["code"] for error in refused} == {SESSION_REFUSED}
        assert all("max_downstream_sessions" in error["message"] for error in refused)
        assert {error["data"]["type"] for error in refused} == {"ConnectionLimitError"}
