"""Real SDK clients against a proxy that wants bearer tokens: the MCP Python SDK and the TypeScript SDK (npm
`@modelcontextprotocol/sdk`, driven by tests/fixtures/ts_client.mjs) each connect with a token and keep their
session, so the upstream's state lives across calls; without a token each sees the 401, and the metadata URL
its `WWW-Authenticate` names serves the RFC 9728 document. A wrong token is `invalid_token`, and another
principal presenting a session's `Mcp-Session-Id` gets 404, as for an unknown id.

The proxy runs in this process (`running_app`), its upstreams in memory; the Node client reaches it over real
HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from mcpstore_proxy.errors import AuthenticationError
from tests.conversation import structured
from tests.inprocess import InProcessProxy, running_app
from tests.support import ACCEPT, FIXTURES, INITIALIZE, NODE_BIN, alice_and_bob_config, node_environment

pytestmark = pytest.mark.anyio

ALICE_TOKEN: Final = "alice-token-4f7c1e9a2b"
BOB_TOKEN: Final = "bob-token-8d3a6c0e5f71"
OPERATOR_TOKEN: Final = "operator-token-1b2c3d4e5f"
"""The config's `admin_token`: what `running_app` asks `/admin/status` with while the upstreams start."""
TS_CLIENT: Final = FIXTURES / "ts_client.mjs"
NODE_SECONDS: Final = 60


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncGenerator[InProcessProxy]:
    config = alice_and_bob_config(tmp_path, alice_token=ALICE_TOKEN, bob_token=BOB_TOKEN, operator_token=OPERATOR_TOKEN)
    async with running_app(config) as running:
        yield running


def metadata_url(proxy: InProcessProxy) -> str:
    """Where the 401 must send a client (RFC 9728 §3.1: the well-known path goes before the resource's path)."""
    return f"http://127.0.0.1:{proxy.port}/.well-known/oauth-protected-resource/mcp"


def challenge(header: str | None) -> dict[str, str]:
    """The auth-params of a `WWW-Authenticate: Bearer k="v", ...` challenge."""
    assert header is not None
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', header))


# The Python SDK client.


@dataclass
class Traffic:
    """What a Python SDK client's HTTP client saw: the session ids it sent, and the responses that refused it."""

    session_ids_sent: set[str] = field(default_factory=set[str])
    refusals: list[httpx2.Response] = field(default_factory=list[httpx2.Response])

    async def on_request(self, request: httpx2.Request) -> None:
        if "mcp-session-id" in request.headers:
            self.session_ids_sent.add(request.headers["mcp-session-id"])

    async def on_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.refusals.append(response)


@asynccontextmanager
async def python_client(url: str, traffic: Traffic, token: str | None = None) -> AsyncGenerator[Client]:
    """The Python SDK's `Client`, as its docs have it, over Streamable HTTP with a bearer token (if any)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    hooks = {"request": [traffic.on_request], "response": [traffic.on_response]}
    async with (
        httpx2.AsyncClient(headers=headers, event_hooks=hooks) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def refused_as_unauthenticated() -> pytest.RaisesGroup[MCPError]:
    """What the Python SDK's `Client` raises when the proxy refuses it: the proxy's JSON-RPC error (its code for
    `AuthenticationError`), from inside the client's task groups, so wrapped in exception groups."""
    return pytest.RaisesGroup(
        pytest.RaisesExc(MCPError, check=lambda error: error.code == AuthenticationError.code),
        flatten_subgroups=True,
    )


# The TypeScript SDK client.


async def ts_client(url: str, *calls: str, token: str | None = None) -> dict[str, Any]:
    """Run tests/fixtures/ts_client.mjs under Node 22: connect, make `calls` (`TOOL` or `TOOL=JSON`) in one
    session, end it; returns the script's JSON report."""
    command = [str(NODE_BIN / "node"), str(TS_CLIENT), url, *(["--token", token] if token else []), *calls]
    output: dict[str, bytes] = {}
    process = await anyio.open_process(command, env=node_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    async def drain(name: str, stream: anyio.abc.ByteReceiveStream) -> None:
        output[name] = b"".join([chunk async for chunk in stream])

    try:
        with anyio.fail_after(NODE_SECONDS):
            async with anyio.create_task_group() as group:
                assert process.stdout is not None
                assert process.stderr is not None
                group.start_soon(drain, "stdout", process.stdout)
                group.start_soon(drain, "stderr", process.stderr)
                await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
    stdout, stderr = output["stdout"].decode(), output["stderr"].decode()
    assert process.returncode == 0, f"ts_client.mjs exited with {process.returncode}:\n{stderr}{stdout}"
    report: dict[str, Any] = json.loads(stdout)
    return report


def ts_structured(report: dict[str, Any]) -> list[Any]:
    """The `result` value of each call the TypeScript client made, failing loudly on an error."""
    values: list[Any] = []
    for result in report["results"]:
        assert "error" not in result, result
        assert not result["is_error"], result
        values.append(result["structured"]["result"])
    return values


# The tests.


async def test_python_sdk_client_with_a_bearer_token_keeps_its_upstream_state_across_calls(
    proxy: InProcessProxy,
) -> None:
    alice_traffic, bob_traffic = Traffic(), Traffic()
    async with (
        python_client(proxy.url, alice_traffic, ALICE_TOKEN) as alice,
        python_client(proxy.url, bob_traffic, BOB_TOKEN) as bob,
    ):
        assert structured(await alice.call_tool("state_remember", {"value": "first"})) == ["first"]
        assert structured(await bob.call_tool("state_remember", {"value": "bob's"})) == ["bob's"]
        assert structured(await alice.call_tool("state_remember", {"value": "second"})) == ["first", "second"]
        assert structured(await alice.call_tool("state_recall", {})) == ["first", "second"]
        alice_upstream = structured(await alice.call_tool("state_whoami", {}))
        assert structured(await alice.call_tool("state_whoami", {})) == alice_upstream
        assert structured(await bob.call_tool("state_whoami", {})) != alice_upstream
        # Auto-negotiation lands in 2026-07-28, sessionless: each principal's requests share its own session.
        assert alice.protocol_version == "2026-07-28"

    assert alice_traffic.session_ids_sent == bob_traffic.session_ids_sent == set()
    assert alice_traffic.refusals == bob_traffic.refusals == []


async def test_python_sdk_client_without_a_token_sees_401_and_the_metadata_url(proxy: InProcessProxy) -> None:
    traffic = Traffic()
    with refused_as_unauthenticated():
        async with python_client(proxy.url, traffic):
            pass

    assert traffic.refusals, "the proxy refused with an HTTP status the client could see"
    assert {response.status_code for response in traffic.refusals} == {401}
    params = challenge(traffic.refusals[0].headers.get("www-authenticate"))
    assert params == {"resource_metadata": metadata_url(proxy)}  # no token, no `error` (RFC 6750 §3.1)

    async with httpx2.AsyncClient() as http:
        document = (await http.get(params["resource_metadata"])).raise_for_status().json()
        root = (await http.get(f"http://127.0.0.1:{proxy.port}/.well-known/oauth-protected-resource")).json()
    assert document["resource"] == proxy.url
    assert document["bearer_methods_supported"] == ["header"]
    assert root == document


async def test_typescript_sdk_client_with_a_bearer_token_keeps_its_upstream_state_across_calls(
    proxy: InProcessProxy,
) -> None:
    calls = ('state_remember={"value": "first"}', 'state_remember={"value": "second"}', "state_recall")
    alice = await ts_client(proxy.url, *calls, "state_whoami", "state_whoami", token=ALICE_TOKEN)
    assert alice["connected"], alice
    first, both, recalled, upstream, upstream_again = ts_structured(alice)
    assert (first, both, recalled) == (["first"], ["first", "second"], ["first", "second"])
    assert upstream == upstream_again
    assert alice["protocol_version"] == "2025-11-25"
    assert alice["session_ids_sent"] == [alice["session_id"]], "one Mcp-Session-Id for every request after initialize"

    bob = await ts_client(proxy.url, "state_recall", "state_whoami", token=BOB_TOKEN)
    bob_recalled, bob_upstream = ts_structured(bob)
    assert bob_recalled == []
    assert bob_upstream != upstream
    assert bob["session_id"] != alice["session_id"]


async def test_typescript_sdk_client_without_a_token_sees_401_and_the_metadata_url(proxy: InProcessProxy) -> None:
    report = await ts_client(proxy.url, "state_whoami")

    assert not report["connected"], report
    assert report["status"] == 401
    assert report["error"]["code"] == 401  # the SDK's StreamableHTTPError carries the status
    assert challenge(report["www_authenticate"]) == {"resource_metadata": metadata_url(proxy)}
    assert report["resource_metadata_url"] == metadata_url(proxy)  # as the SDK's own parser reads the challenge
    metadata = report["resource_metadata"]  # as the SDK's own discovery fetched and validated it
    assert metadata["resource"] == proxy.url
    assert metadata["bearer_methods_supported"] == ["header"]


async def test_a_wrong_token_gets_401_with_invalid_token_for_either_sdk_client(proxy: InProcessProxy) -> None:
    wrong = "not-a-token-anyone-was-given"
    traffic = Traffic()
    with refused_as_unauthenticated():
        async with python_client(proxy.url, traffic, wrong):
            pass
    assert {response.status_code for response in traffic.refusals} == {401}
    python_params = challenge(traffic.refusals[0].headers.get("www-authenticate"))

    report = await ts_client(proxy.url, "state_whoami", token=wrong)
    assert not report["connected"], report
    assert report["status"] == 401
    ts_params = challenge(report["www_authenticate"])

    for params in (python_params, ts_params):
        assert params["error"] == "invalid_token"
        assert params["resource_metadata"] == metadata_url(proxy)


async def test_bob_presenting_alices_session_id_gets_404_as_for_an_unknown_id(proxy: InProcessProxy) -> None:
    def as_(token: str, session_id: str | None = None) -> dict[str, str]:
        headers = {**ACCEPT, "Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25"}
        return {**headers, "Mcp-Session-Id": session_id} if session_id else headers

    def request(method: str, request_id: int | None = None, **params: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        return {**message, "id": request_id} if request_id is not None else message

    remember = request("tools/call", 2, name="state_remember", arguments={"value": "alice's"})
    recall = request("tools/call", 3, name="state_recall", arguments={})
    async with httpx2.AsyncClient() as http:
        opened = await http.post(
            proxy.url,
            headers=as_(ALICE_TOKEN),
            json=INITIALIZE,
        )
        assert opened.status_code == 200, opened.text
        alices = opened.headers["mcp-session-id"]
        initialized = await http.post(
            proxy.url, headers=as_(ALICE_TOKEN, alices), json=request("notifications/initialized")
        )
        assert initialized.status_code == 202, initialized.text
        assert (await http.post(proxy.url, headers=as_(ALICE_TOKEN, alices), json=remember)).status_code == 200

        hijack = await http.post(proxy.url, headers=as_(BOB_TOKEN, alices), json=recall)
        unknown = await http.post(proxy.url, headers=as_(BOB_TOKEN, "0" * 32), json=recall)
        hijack_close = await http.delete(proxy.url, headers=as_(BOB_TOKEN, alices))
        listen = {**as_(BOB_TOKEN, alices), "Accept": "text/event-stream"}
        async with http.stream("GET", proxy.url, headers=listen) as hijack_stream:
            pass  # the status is all this needs; a stream opened by mistake closes here
        assert (hijack.status_code, hijack_close.status_code, hijack_stream.status_code) == (404, 404, 404)
        assert unknown.status_code == 404
        assert hijack.json() == unknown.json(), "no oracle: alice's id looks to bob like any unknown id"
        assert "alice's" not in hijack.text

        still_alices = await http.post(proxy.url, headers=as_(ALICE_TOKEN, alices), json=recall)
        assert still_alices.status_code == 200, "bob's attempts left alice's session alone"
        assert "alice's" in still_alices.text
        assert (await http.delete(proxy.url, headers=as_(ALICE_TOKEN, alices))).status_code == 200


async def test_of_two_authorization_headers_the_first_decides(proxy: InProcessProxy) -> None:
    def opening(*authorizations: str) -> list[tuple[str, str]]:
        headers = [*ACCEPT.items(), ("MCP-Protocol-Version", "2025-11-25")]
        return [*headers, *(("Authorization", value) for value in authorizations)]

    async with httpx2.AsyncClient() as http:
        smuggled = await http.post(proxy.url, json=INITIALIZE, headers=opening("Bearer wrong", f"Bearer {ALICE_TOKEN}"))
        empty_first = await http.post(proxy.url, json=INITIALIZE, headers=opening("", f"Bearer {ALICE_TOKEN}"))
        alice = await http.post(proxy.url, json=INITIALIZE, headers=opening(f"Bearer {ALICE_TOKEN}", "Bearer wrong"))

    assert smuggled.status_code == 401
    assert empty_first.status_code == 401
    assert alice.status_code == 200
    assert "mcp-session-id" in alice.headers
