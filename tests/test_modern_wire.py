"""The 2026-07-28 wire as a client sees it: discovery, version errors, sealed request state, listen streams, cache
hints. Raw JSON-RPC over HTTP where the shape is the point; the SDK's client where the behaviour is.

The proxy runs in this process (`running_app`) with the stateful fixture upstream in memory.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import types
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from mcpstore_proxy.rounds import ANSWER_SECONDS
from tests.fixtures.conformance_server import ConformanceFixtures
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import CONFORMANCE_SERVER, connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
OPERATOR = "operator-token-0123456789"


def envelope(capabilities: Mapping[str, Any] | None = None, version: str = MODERN) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": dict(capabilities or {}),
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
    }


async def post(
    url: str, method: str, params: Mapping[str, Any], *, version: str = MODERN, **headers: str
) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        name = params.get("name") or params.get("uri")
        return await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": dict(params)},
            headers={
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": version,
                "mcp-method": method,
                **({"mcp-name": str(name)} if name else {}),
                **headers,
            },
        )


async def test_discover_offers_both_eras_and_the_version_error_lists_only_what_discover_offers(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        discovered = (await post(proxy.url, "server/discover", {"_meta": envelope()})).json()["result"]
        unsupported = await post(
            proxy.url, "tools/list", {"_meta": envelope(version="2099-01-01")}, version="2099-01-01"
        )
    offered = discovered["supportedVersions"]
    assert set(offered) == {*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS}
    assert discovered["capabilities"]["tools"]["listChanged"] is True
    error = unsupported.json()["error"]
    assert unsupported.status_code == 400
    assert error["code"] == -32022
    assert set(error["data"]["supported"]) <= set(offered)


async def test_a_tampered_request_state_is_refused_and_the_genuine_one_completes(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    call = {"name": "state_ask", "arguments": {"prompt": "yes?"}, "_meta": envelope({"sampling": {}})}
    answer = {"role": "assistant", "content": {"type": "text", "text": "yes"}, "model": "m"}
    async with running_app(config) as proxy:
        first = (await post(proxy.url, "tools/call", call)).json()["result"]
        assert first["resultType"] == "input_required"
        (key,) = first["inputRequests"]
        assert first["inputRequests"][key]["method"] == "sampling/createMessage"
        state = first["requestState"]

        tampered = await post(
            proxy.url, "tools/call", {**call, "inputResponses": {key: answer}, "requestState": state + "x"}
        )
        assert tampered.json()["error"]["code"] == -32602
        assert "integrity" in tampered.json()["error"]["message"]

        done = await post(proxy.url, "tools/call", {**call, "inputResponses": {key: answer}, "requestState": state})
        assert done.json()["result"]["resultType"] == "complete"
        assert done.json()["result"]["structuredContent"] == {"result": "yes"}

        replayed = await post(proxy.url, "tools/call", {**call, "inputResponses": {key: answer}, "requestState": state})
        assert "over" in replayed.json()["error"]["message"]


async def test_a_request_state_sealed_for_one_principal_is_refused_to_another(tmp_path: Path) -> None:
    tokens = [{"token": ALICE, "principal": "alice"}, {"token": BOB, "principal": "bob"}]
    config = write_config(tmp_path, {"state": fixture_server("state")}, auth={"tokens": tokens}, admin_token=OPERATOR)
    call = {"name": "state_ask", "arguments": {"prompt": "secret?"}, "_meta": envelope({"sampling": {}})}
    answer = {"role": "assistant", "content": {"type": "text", "text": "stolen"}, "model": "m"}
    async with running_app(config, admin_token=OPERATOR) as proxy:
        first = (await post(proxy.url, "tools/call", call, authorization=f"Bearer {ALICE}")).json()["result"]
        (key,) = first["inputRequests"]
        resumed = {**call, "inputResponses": {key: answer}, "requestState": first["requestState"]}
        stolen = await post(proxy.url, "tools/call", resumed, authorization=f"Bearer {BOB}")
        assert stolen.json()["error"]["code"] == -32602
        mine = await post(proxy.url, "tools/call", resumed, authorization=f"Bearer {ALICE}")
        assert mine.json()["result"]["resultType"] == "complete"


async def test_a_resource_read_carries_cache_hints_and_its_contents(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        read = (await post(proxy.url, "resources/read", {"uri": "memo://a", "_meta": envelope()})).json()["result"]
    assert read["contents"][0]["text"] == "memo a"
    assert read["ttlMs"] == 0
    assert read["cacheScope"] == "private"


async def test_a_listen_stream_hears_that_its_sessions_tool_list_changed(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url, mode=MODERN) as client:
        async with client.listen(tools_list_changed=True) as subscription:
            await client.call_tool("state_grow", {"name": "sprout"})
            with anyio.fail_after(10):
                event = await anext(aiter(subscription))
        assert type(event).__name__ == "ToolsListChanged"
        assert "state_sprout" in {tool.name for tool in (await client.list_tools()).tools}


async def test_a_2026_call_whose_mcp_param_header_disagrees_with_its_argument_is_refused(tmp_path: Path) -> None:
    upstreams = MemoryUpstreams(scripts={CONFORMANCE_SERVER: lambda: ConformanceFixtures().build_server()})
    server = {"command": sys.executable, "args": [str(CONFORMANCE_SERVER)], "prefix": ""}
    config = write_config(tmp_path, {"conformance": server})
    call = {"name": "test_custom_header", "arguments": {"region": "eu"}, "_meta": envelope()}
    async with running_app(config, upstreams=upstreams) as proxy:
        agreeing = await post(proxy.url, "tools/call", call, **{"mcp-param-region": "eu"})
        disagreeing = await post(proxy.url, "tools/call", call, **{"mcp-param-region": "us"})
        missing = await post(proxy.url, "tools/call", call)
    assert agreeing.json()["result"]["content"][0]["text"] == "region=eu"
    assert disagreeing.status_code == missing.status_code == 400


async def test_a_request_whose_client_never_comes_back_is_cancelled_upstream_and_its_state_refused(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    call = {"name": "state_ask", "arguments": {"prompt": "still there?"}, "_meta": envelope({"sampling": {}})}
    answer = {"role": "assistant", "content": {"type": "text", "text": "late"}, "model": "m"}
    async with running_app(config) as proxy:
        first = (await post(proxy.url, "tools/call", call)).json()["result"]
        (key,) = first["inputRequests"]
        await proxy.advance_clock(ANSWER_SECONDS - 1)
        assert "did not come back" not in proxy.log
        await proxy.advance_clock(2)
        await wait_until(lambda: "did not come back" in proxy.log, what="the exchange to expire")
        late = {**call, "inputResponses": {key: answer}, "requestState": first["requestState"]}
        refused = await post(proxy.url, "tools/call", late)
        error = refused.json()["error"]
        assert error["code"] == types.INVALID_PARAMS
        assert "names a round that is over" in error["message"]  # not the integrity check's refusal
        again = (await post(proxy.url, "tools/call", call)).json()["result"]  # asking afresh still works
        assert again["resultType"] == "input_required"


@pytest.mark.parametrize("capabilities", [{}, {"sampling": {}}], ids=["declaring-nothing-to-ask", "declaring-sampling"])
async def test_a_2026_client_that_hangs_up_mid_call_has_the_call_cancelled_upstream(
    tmp_path: Path, capabilities: dict[str, Any]
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    arguments = {"seconds": 60, "started_marker": str(started), "cancelled_marker": str(cancelled)}
    call = {"name": "state_sleep", "arguments": arguments, "_meta": envelope(capabilities)}
    async with running_app(config) as proxy:
        async with anyio.create_task_group() as tg:
            tg.start_soon(post, proxy.url, "tools/call", call)
            await wait_until(started.exists, what="the upstream to start the call")
            tg.cancel_scope.cancel()  # the client hangs up: its connection closes with the request unanswered
        await wait_until(cancelled.exists, what="the upstream to see the cancellation")
        echo = {"name": "state_echo", "arguments": {"text": "still fine"}, "_meta": envelope(capabilities)}
        still = (await post(proxy.url, "tools/call", echo)).json()["result"]
        assert (still["resultType"], still["structuredContent"]) == ("complete", {"result": "still fine"})
