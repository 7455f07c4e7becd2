"""The client matrix, SDK clients: every SDK client's default mode, and the modes each one offers, against a real
proxy process. The upstream's state lives across calls within one client, and comes back on a new connection (or in
a new process) that presents the same key, the `X-MCPStore-Session` header or the `session_id` argument.

The clients: the MCP Python SDK's `Client(url)` (auto, and legacy), the TypeScript SDK (Streamable HTTP and its
SSE transport, through tests/fixtures/ts_client.mjs) and FastMCP's `Client`. tests/matrix.py holds the shared proxy
and explains who keeps what; mcp-remote and the Inspector CLI with mcpdo have their own modules
(tests/test_client_matrix_mcp_remote.py, tests/test_client_matrix_inspector.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import fastmcp
import httpx2
import pytest
from fastmcp.client.client import CallToolResult as FastMCPResult
from fastmcp.client.transports import StreamableHttpTransport
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.inprocess import running_app
from tests.matrix import HEADER, KEYS, MODERN, Key, Probe, keyed, recall, remember, sse_url, whoami

# The module's fixtures, which pytest finds by name.
from tests.matrix import anyio_backend as anyio_backend
from tests.matrix import probe as probe
from tests.matrix import proxy as proxy
from tests.matrix import session_name as session_name
from tests.support import (
    FIXTURES,
    NODE_BIN,
    ProxyProcess,
    alice_and_bob_config,
    node_environment,
)

pytestmark = pytest.mark.anyio

TS_CLIENT: Final = FIXTURES / "ts_client.mjs"
NODE_SECONDS: Final = 60
ALICE_TOKEN: Final = "alice-token-matrix-5e1f0a"
BOB_TOKEN: Final = "bob-token-matrix-93c7d2"
OPERATOR_TOKEN: Final = "operator-token-matrix-7a4b"


# The MCP Python SDK.


@asynccontextmanager
async def python_client(url: str, mode: str = "auto", headers: dict[str, str] | None = None) -> AsyncGenerator[Client]:
    """The Python SDK's `Client`: `Client(url)` as its docs have it, or over an HTTP client that sends `headers`."""
    if not headers:
        async with Client(url, mode=mode) as client:
            yield client
        return
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def test_python_sdk_client_by_default_speaks_2026_and_keeps_its_state_across_calls(
    proxy: ProxyProcess, probe: Probe
) -> None:
    async with Client(proxy.url) as client:
        assert probe.mine(await remember(client, probe.value("one"))) == [probe.value("one")]
        assert probe.mine(await remember(client, probe.value("two"))) == [probe.value("one"), probe.value("two")]
        assert probe.mine(await recall(client)) == [probe.value("one"), probe.value("two")]
        assert await whoami(client) == await whoami(client)
        assert client.protocol_version == MODERN, "server/discover offered 2026-07-28, so auto mode adopts it"


async def test_python_sdk_client_by_default_gets_its_state_back_after_reconnecting_without_a_key(
    proxy: ProxyProcess, probe: Probe
) -> None:
    async with Client(proxy.url) as first:
        await remember(first, probe.value("kept"))
        upstream = await whoami(first)
    async with Client(proxy.url) as second:
        # Without a key, a 2026-07-28 request runs in its principal's default session: here, the anonymous one.
        assert probe.mine(await recall(second)) == [probe.value("kept")]
        assert await whoami(second) == upstream


async def test_python_sdk_client_in_legacy_mode_keeps_its_connections_state_across_calls(
    proxy: ProxyProcess, probe: Probe
) -> None:
    async with Client(proxy.url, mode="legacy") as client:
        assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        await remember(client, probe.value("one"))
        assert await remember(client, probe.value("two")) == [probe.value("one"), probe.value("two")]
        assert await recall(client) == [probe.value("one"), probe.value("two")]
        assert await whoami(client) == await whoami(client)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_python_sdk_client_gets_its_state_back_on_a_new_connection_that_presents_its_session_key(
    proxy: ProxyProcess, probe: Probe, session_name: str, mode: str, key: Key
) -> None:
    headers = {HEADER: session_name} if key == "header" else None
    async with python_client(proxy.url, mode, headers) as first:
        assert await remember(first, probe.value("kept"), **keyed({}, key, session_name)) == [probe.value("kept")]
        upstream = await whoami(first, **keyed({}, key, session_name))
    async with python_client(proxy.url, mode, headers) as second:
        assert await recall(second, **keyed({}, key, session_name)) == [probe.value("kept")]
        assert await whoami(second, **keyed({}, key, session_name)) == upstream
    async with python_client(proxy.url, mode) as stranger:
        assert probe.mine(await recall(stranger)) == [], "the named session is not the keyless one"


async def test_two_keyless_handshake_clients_never_see_each_others_state(proxy: ProxyProcess, probe: Probe) -> None:
    async with python_client(proxy.url, "legacy") as alice, python_client(proxy.url, "legacy") as bob:
        await remember(alice, probe.value("alice"))
        await remember(bob, probe.value("bob"))
        assert await recall(alice) == [probe.value("alice")]
        assert await recall(bob) == [probe.value("bob")]
        assert await whoami(alice) != await whoami(bob)


async def test_two_2026_clients_with_different_bearer_tokens_never_see_each_others_state(
    tmp_path: Path, probe: Probe
) -> None:
    config = alice_and_bob_config(tmp_path, alice_token=ALICE_TOKEN, bob_token=BOB_TOKEN, operator_token=OPERATOR_TOKEN)
    alice_headers = {"Authorization": f"Bearer {ALICE_TOKEN}"}
    bob_headers = {"Authorization": f"Bearer {BOB_TOKEN}"}
    async with running_app(config) as secured:  # its own proxy, with auth: in this process, as no client here needs one
        async with (
            python_client(secured.url, MODERN, alice_headers) as alice,
            python_client(secured.url, MODERN, bob_headers) as bob,
        ):
            assert alice.protocol_version == bob.protocol_version == MODERN
            assert await remember(alice, probe.value("alice")) == [probe.value("alice")]
            assert await recall(alice) == [probe.value("alice")], "alice's default session kept her state"
            assert await recall(bob) == [], "bob's default session is not alice's"
            assert await remember(bob, probe.value("bob")) == [probe.value("bob")]
            assert await recall(alice) == [probe.value("alice")]
            assert await whoami(alice) != await whoami(bob)
        async with python_client(secured.url, MODERN, alice_headers) as alice_again:
            assert await recall(alice_again) == [probe.value("alice")], "alice's state outlives her client"


# The TypeScript SDK (tests/fixtures/ts_client.mjs).


async def run_node(command: Sequence[str], env: dict[str, str]) -> str:
    """Run a Node client to completion (bounded); its stdout, failing with its output if it exits non-zero."""
    with anyio.fail_after(NODE_SECONDS):
        completed = await anyio.run_process(command, env=env, check=False)
    stdout, stderr = completed.stdout.decode(), completed.stderr.decode()
    assert completed.returncode == 0, f"{command[:3]} exited with {completed.returncode}:\n{stderr}{stdout}"
    return stdout


async def typescript_client(url: str, transport: str, *calls: str, header: str | None = None) -> dict[str, Any]:
    """One ts_client.mjs process: connect over `transport` (`http` or `sse`), make `calls` (`TOOL` or `TOOL=JSON`)
    in that one session, close; returns its report, failing loudly on any error."""
    options = ["--transport", transport, *(["--header", header] if header else [])]
    report: dict[str, Any] = json.loads(
        await run_node([str(NODE_BIN / "node"), str(TS_CLIENT), url, *options, *calls], node_environment())
    )
    assert report["connected"], report
    for result in report["results"]:
        assert "error" not in result, result
        assert not result["is_error"], result
    return report


def results(report: dict[str, Any]) -> list[Any]:
    return [result["structured"]["result"] for result in report["results"]]


def call(tool: str, **arguments: Any) -> str:
    return f"{tool}={json.dumps(arguments)}"


def ts_url(proxy: ProxyProcess, transport: str) -> str:
    return sse_url(proxy) if transport == "sse" else proxy.url


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_typescript_sdk_client_keeps_its_connections_state_across_calls(
    proxy: ProxyProcess, probe: Probe, transport: str
) -> None:
    one, two = probe.value("one"), probe.value("two")
    report = await typescript_client(
        ts_url(proxy, transport),
        transport,
        call("state_remember", value=one),
        call("state_remember", value=two),
        "state_recall",
        "state_whoami",
        "state_whoami",
    )
    first, both, recalled, upstream, upstream_again = results(report)
    assert (first, both, recalled) == ([one], [one, two], [one, two])
    assert upstream == upstream_again
    assert report["protocol_version"] in HANDSHAKE_PROTOCOL_VERSIONS
    assert report["session_ids_sent"] == [report["session_id"]], "one session for every request"


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_typescript_sdk_client_gets_its_state_back_in_a_new_process_that_presents_its_session_key(
    proxy: ProxyProcess, probe: Probe, session_name: str, transport: str, key: Key
) -> None:
    url, value = ts_url(proxy, transport), probe.value("kept")
    header = f"{HEADER}: {session_name}" if key == "header" else None
    first = await typescript_client(
        url,
        transport,
        call("state_remember", **keyed({"value": value}, key, session_name)),
        call("state_whoami", **keyed({}, key, session_name)),
        header=header,
    )
    second = await typescript_client(
        url,
        transport,
        call("state_recall", **keyed({}, key, session_name)),
        call("state_whoami", **keyed({}, key, session_name)),
        header=header,
    )
    assert results(first)[0] == [value]
    assert results(second) == [[value], results(first)[1]]
    assert second["session_id"] != first["session_id"], "a new connection"


# FastMCP's Client.


def fastmcp_result(result: FastMCPResult) -> Any:
    assert not result.is_error, result
    assert result.structured_content is not None, result
    return result.structured_content["result"]


async def test_fastmcp_client_by_default_speaks_2026_and_keeps_its_state_across_calls_and_reconnects(
    proxy: ProxyProcess, probe: Probe
) -> None:
    one, two = probe.value("one"), probe.value("two")
    async with fastmcp.Client(proxy.url) as client:
        assert probe.mine(fastmcp_result(await client.call_tool("state_remember", {"value": one}))) == [one]
        assert probe.mine(fastmcp_result(await client.call_tool("state_remember", {"value": two}))) == [one, two]
        assert probe.mine(fastmcp_result(await client.call_tool("state_recall", {}))) == [one, two]
        upstream = fastmcp_result(await client.call_tool("state_whoami", {}))
        assert fastmcp_result(await client.call_tool("state_whoami", {})) == upstream
        era = client.protocol_version
    async with fastmcp.Client(proxy.url) as again:
        assert era == MODERN, "server/discover offered 2026-07-28, so auto mode adopts it"
        assert probe.mine(fastmcp_result(await again.call_tool("state_recall", {}))) == [one, two]


@pytest.mark.parametrize("key", KEYS)
async def test_fastmcp_client_gets_its_state_back_on_a_new_connection_that_presents_its_session_key(
    proxy: ProxyProcess, probe: Probe, session_name: str, key: Key
) -> None:
    value = probe.value("kept")

    def connect() -> fastmcp.Client[StreamableHttpTransport]:
        if key == "header":
            return fastmcp.Client(StreamableHttpTransport(proxy.url, headers={HEADER: session_name}))
        return fastmcp.Client(StreamableHttpTransport(proxy.url))

    async with connect() as first:
        remembered = await first.call_tool("state_remember", keyed({"value": value}, key, session_name))
        assert fastmcp_result(remembered) == [value]
        upstream = fastmcp_result(await first.call_tool("state_whoami", keyed({}, key, session_name)))
    async with connect() as second:
        assert fastmcp_result(await second.call_tool("state_recall", keyed({}, key, session_name))) == [value]
        assert fastmcp_result(await second.call_tool("state_whoami", keyed({}, key, session_name))) == upstream
    async with fastmcp.Client(proxy.url) as stranger:
        assert probe.mine(fastmcp_result(await stranger.call_tool("state_recall", {}))) == []
