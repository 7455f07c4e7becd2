"""Every session has an owner. The hijack matrix: two principals, alice (granted agent team_1) and bob (granted
team_2), and an admin, ops, proved by static tokens and by JWTs; every way one principal could reach another's
session or scope fails with the documented status, and the same request by the owner works.

In process (`running_app`, upstreams in memory), with real MCP clients and plain HTTP where a client would hide
the status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest

from mcpstore_proxy import MCPStore
from tests.conversation import structured
from tests.inprocess import InProcessProxy, running_app
from tests.issuer import AUDIENCE, ISSUER, TestIssuer, serving_issuer
from tests.support import connect, fixture_server, write_config

pytestmark = pytest.mark.anyio

_ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
_HELLO = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


@dataclass
class Cast:
    """The proxy, and the `Authorization` headers that prove each principal."""

    proxy: InProcessProxy
    alice: dict[str, str]
    bob: dict[str, str]
    ops: dict[str, str]

    async def admin(self, who: dict[str, str], method: str, path: str, body: Any = None) -> httpx2.Response:
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{self.proxy.port}/admin") as http:
            return await http.request(method, path, json=body, headers={**who, "Content-Type": "application/json"})


@pytest.fixture
def issuer() -> Generator[TestIssuer]:
    with serving_issuer(TestIssuer()) as serving:
        yield serving


@pytest.fixture(params=["tokens", "jwt"])
async def cast(request: pytest.FixtureRequest, tmp_path: Path, issuer: TestIssuer) -> AsyncGenerator[Cast]:
    if request.param == "tokens":
        auth: dict[str, Any] = {
            "tokens": [
                {"token": "alice-token-0123456789", "principal": "alice", "agents": ["team_1"]},
                {"token": "bob-token-0123456789", "principal": "bob", "agents": ["team_2"]},
                {"token": "ops-token-0123456789", "principal": "ops", "admin": True},
            ]
        }
        bearer = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "ops": "ops-token-0123456789"}
    else:
        jwt = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": issuer.jwks_url}
        auth = {"jwt": {**jwt, "agents_claim": "agents", "admin_claim": "roles"}}
        bearer = {
            "alice": issuer.mint("alice", agents=["team_1"]),
            "bob": issuer.mint("bob", agents=["team_2"]),
            "ops": issuer.mint("ops", roles=["admin"]),
        }
    config = write_config(tmp_path, {"state": fixture_server("state")}, auth=auth)
    async with running_app(config, admin_token=bearer["ops"]) as proxy:
        yield Cast(proxy, *({"Authorization": f"Bearer {bearer[who]}"} for who in ("alice", "bob", "ops")))


@asynccontextmanager
async def raw_session(url: str, who: dict[str, str]) -> AsyncGenerator[dict[str, str]]:
    """A Streamable HTTP session opened with plain HTTP; yields the headers that use it."""
    async with httpx2.AsyncClient() as http:
        opened = await http.post(
            url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": _HELLO}, headers={**_ACCEPT, **who}
        )
        assert opened.status_code == 200, opened.text
        headers = {**_ACCEPT, **who, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
        headers["Mcp-Protocol-Version"] = "2025-11-25"
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        yield headers


async def post(url: str, headers: dict[str, str], method: str, params: dict[str, Any]) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.post(
            url, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params}, headers=headers
        )


def answer_of(response: httpx2.Response) -> dict[str, Any]:
    data = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    document: dict[str, Any] = json.loads(data[-1]) if data else response.json()
    return document


async def test_another_principal_presenting_a_connections_id_gets_404_exactly_as_for_an_unknown_id(cast: Cast) -> None:
    url = cast.proxy.url
    async with raw_session(url, cast.alice) as alice:
        remembered = await post(url, alice, "tools/call", {"name": "state_remember", "arguments": {"value": "mine"}})
        assert remembered.status_code == 200
        bobs_try = {**alice, **cast.bob}
        unknown = {**bobs_try, "Mcp-Session-Id": "0" * 32}
        async with httpx2.AsyncClient() as http:
            for method in ("POST", "GET", "DELETE"):
                body = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "state_recall"}}
                content = json.dumps(body) if method == "POST" else None
                hijack = await http.request(method, url, headers=bobs_try, content=content)
                baseline = await http.request(method, url, headers=unknown, content=content)
                assert (hijack.status_code, hijack.text) == (404, baseline.text), method
        recalled = await post(url, alice, "tools/call", {"name": "state_recall", "arguments": {}})
        assert answer_of(recalled)["result"]["structuredContent"]["result"] == ["mine"]


@pytest.mark.parametrize("by", ["argument", "header", "sessionless request"])
async def test_the_same_session_name_is_a_separate_session_for_each_principal(cast: Cast, by: str) -> None:
    def client_for(who: dict[str, str]) -> Any:
        headers = {**who, "X-MCPStore-Session": "plan"} if by != "argument" else who
        return connect(cast.proxy.url, headers=headers, mode="2026-07-28" if by == "sessionless request" else "legacy")

    named = {"session_id": "plan"} if by == "argument" else {}
    async with client_for(cast.alice) as alice:
        await alice.call_tool("state_remember", {"value": "alice's plan", **named})
    async with client_for(cast.bob) as bob:
        assert structured(await bob.call_tool("state_recall", named)) == []
        await bob.call_tool("state_remember", {"value": "bob's plan", **named})
    async with client_for(cast.alice) as alice:
        assert structured(await alice.call_tool("state_recall", named)) == ["alice's plan"]


@pytest.mark.parametrize("by", ["path", "header"])
async def test_an_agent_scope_is_open_only_to_the_principals_granted_it(cast: Cast, by: str) -> None:
    def reach(who: dict[str, str], agent: str) -> tuple[str, dict[str, str]]:
        if by == "path":
            return cast.proxy.url.replace("/mcp", f"/agents/{agent}/mcp"), who
        return cast.proxy.url, {**who, "X-MCPStore-Agent": agent}

    url, headers = reach(cast.alice, "team_1")
    async with connect(url, headers=headers) as alice:
        assert structured(await alice.call_tool("state_echo", {"text": "team 1"})) == "team 1"
    url, headers = reach(cast.bob, "team_1")
    refused = await post(url, {**_ACCEPT, **headers}, "initialize", _HELLO)
    assert refused.status_code == 403
    assert "may not use agent 'team_1'" in refused.json()["error"]["message"]
    url, headers = reach(cast.bob, "team_2")
    async with connect(url, headers=headers) as bob:
        assert structured(await bob.call_tool("state_echo", {"text": "team 2"})) == "team 2"


async def test_the_admin_api_shows_and_closes_only_the_callers_own_named_sessions(cast: Cast) -> None:
    assert (await cast.admin(cast.alice, "PUT", "/sessions/plan")).status_code == 200
    assert (await cast.admin(cast.alice, "GET", "/sessions/plan")).status_code == 200
    assert "plan" in [s["session_id"] for s in (await cast.admin(cast.alice, "GET", "/sessions")).json()]
    assert [s["session_id"] for s in (await cast.admin(cast.bob, "GET", "/sessions")).json()] == []
    assert (await cast.admin(cast.bob, "GET", "/sessions/plan")).status_code == 404
    assert (await cast.admin(cast.bob, "POST", "/sessions/plan/extend", {"seconds": 60})).status_code == 404
    await cast.admin(cast.bob, "DELETE", "/sessions/plan")  # closes bob's own (none): alice's is untouched
    assert (await cast.admin(cast.alice, "GET", "/sessions/plan")).status_code == 200


async def test_only_an_admin_changes_the_stores_services_or_reads_the_status(cast: Cast) -> None:
    entry = {"name": "more", "url": "http://127.0.0.1:9/mcp"}
    refused = await cast.admin(cast.bob, "POST", "/services", entry)
    assert refused.status_code == 403
    assert "may not change the store's services" in refused.json()["error"]["message"]
    assert (await cast.admin(cast.bob, "POST", "/services/state/restart")).status_code == 403
    assert (await cast.admin(cast.bob, "GET", "/status")).status_code == 403
    assert (await cast.admin(cast.ops, "GET", "/status")).status_code == 200
    # An admin may, within the URLs the config allows (none here: api_service_urls is empty with auth on).
    unlisted = await cast.admin(cast.ops, "POST", "/services", entry)
    assert unlisted.status_code == 400
    assert "api_service_urls" in unlisted.json()["error"]["message"]


async def test_without_a_token_everything_but_liveness_and_the_metadata_answers_401(cast: Cast) -> None:
    port = cast.proxy.port
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.post("/mcp", json={}, headers=_ACCEPT)).status_code == 401
        assert (await http.get("/admin/sessions")).status_code == 401
        assert (await http.get("/admin/status")).status_code == 401
        bogus = await http.post("/mcp", json={}, headers={**_ACCEPT, "Authorization": "Bearer bogus-token-0123456"})
        assert bogus.status_code == 401
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/.well-known/oauth-protected-resource")).status_code == 200


async def test_the_remote_sdk_with_a_token_holds_the_sessions_of_its_own_principal(tmp_path: Path) -> None:
    auth = {
        "tokens": [
            {"token": "alice-token-0123456789", "principal": "alice"},
            {"token": "bob-token-0123456789", "principal": "bob"},
            {"token": "ops-token-0123456789", "principal": "ops", "admin": True},
        ]
    }
    config = write_config(tmp_path, {"state": fixture_server("state")}, auth=auth)
    async with running_app(config) as proxy:
        alice = MCPStore.setup_store(url=proxy.url, token="alice-token-0123456789")
        bob = MCPStore.setup_store(url=proxy.url, token="bob-token-0123456789")
        try:
            plan = alice.for_store().create_session("plan")
            plan.use_tool("remember", {"value": "alice's"})
            assert bob.for_store().find_session("plan") is None
            with bob.for_store().with_session("plan") as bobs:
                assert structured(bobs.use_tool("recall")) == []
            assert structured(plan.use_tool("recall")) == ["alice's"]
        finally:
            await anyio.to_thread.run_sync(alice.close)
            await anyio.to_thread.run_sync(bob.close)
