"""Every client's default mode, and the modes each one offers, against a real proxy process: the upstream's state
lives across calls within one client process, and comes back on a new connection (or in a new process) that
presents the same key, the `X-MCPStore-Session` header or the `session_id` argument.

The clients: the MCP Python SDK's `Client(url)` (auto, and legacy), the TypeScript SDK (Streamable HTTP and its
SSE transport, through tests/fixtures/ts_client.mjs), mcp-remote in every `--protocol` and `--transport`, driven over
stdio by the Python SDK, FastMCP's `Client`, and the MCP Inspector CLI (one process per call) with its `mcpdo`
daemon (one connection across invocations).

Who keeps what. A handshake-era client (2024-11-05 … 2025-11-25) keeps its connection's session. A 2026-07-28
request over HTTP without a key runs in its principal's own default session, one per principal and agent scope.
Any client gets a named session back wherever it presents the name.

One proxy serves the module, without auth, so every client here is the same anonymous principal and the keyless
2026-07-28 clients of every test share one default session. Each test therefore remembers values that carry its
own tag and looks only at those (`Probe`), and names its sessions uniquely, closing them when it ends.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

import anyio
import fastmcp
import httpx2
import pytest
from fastmcp.client.client import CallToolResult as FastMCPResult
from fastmcp.client.transports import StreamableHttpTransport
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.support import (
    FIXTURES,
    NODE_BIN,
    ProxyProcess,
    admin,
    descendants,
    fixture_server,
    is_alive,
    node_environment,
    running_proxy,
    structured,
    wait_until,
    write_config,
)
from tests.test_inspector import inspector, mcpdo

pytestmark = pytest.mark.anyio

MODERN: Final = "2026-07-28"
HEADER: Final = "X-MCPStore-Session"
TS_CLIENT: Final = FIXTURES / "ts_client.mjs"
NODE_SECONDS: Final = 60
ALICE_TOKEN: Final = "alice-token-matrix-5e1f0a"
BOB_TOKEN: Final = "bob-token-matrix-93c7d2"
OPERATOR_TOKEN: Final = "operator-token-matrix-7a4b"

Key = Literal["header", "argument"]
KEYS: Final[Sequence[Key]] = ("header", "argument")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that one proxy (an async fixture) serves every test of the module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncGenerator[ProxyProcess]:
    config = write_config(
        tmp_path_factory.mktemp("client-matrix"),
        {"state": fixture_server("state")},
        # Connections that never say goodbye (each Inspector CLI call, for one) hold an upstream process until
        # they idle out; a minute is far longer than any test's pause between two calls, and the caps leave room
        # for a whole module's worth of them.
        session_idle_timeout_seconds=60,
        max_sessions_per_upstream=256,
        max_named_sessions_per_client=256,
    )
    async with running_proxy(config) as running:
        yield running


@dataclass(frozen=True)
class Probe:
    """Values unique to one test: tests that share a session (the anonymous principal's default one) read only
    their own."""

    tag: str

    def value(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def mine(self, remembered: Any) -> list[str]:
        assert isinstance(remembered, list), remembered
        values = cast("list[Any]", remembered)
        return [value for value in values if isinstance(value, str) and value.startswith(f"{self.tag}-")]


@pytest.fixture
def probe() -> Probe:
    return Probe(f"t{secrets.token_hex(4)}")


@pytest.fixture
async def session_name(proxy: ProxyProcess) -> AsyncGenerator[str]:
    """A session name no other test uses; the session is closed when the test ends."""
    name = f"matrix-{secrets.token_hex(6)}"
    yield name
    closed = await admin(proxy.port, "DELETE", f"/sessions/{name}")
    assert closed.status_code == 200, closed.text


def sse_url(proxy: ProxyProcess) -> str:
    return f"http://127.0.0.1:{proxy.port}/sse"


def keyed(arguments: dict[str, Any], key: Key | None, name: str) -> dict[str, Any]:
    """A tool call's arguments, naming the session when the key travels as the `session_id` argument."""
    return {**arguments, "session_id": name} if key == "argument" else arguments


@asynccontextmanager
async def nothing_left_behind(proxy: ProxyProcess) -> AsyncGenerator[None]:
    """Fail unless every process this block starts (other than the proxy's own upstreams) is gone at its end."""
    before = descendants(os.getpid())
    yield
    started = descendants(os.getpid()) - before - {proxy.pid} - proxy.upstream_pids()
    await wait_until(lambda: not any(is_alive(pid) for pid in started), what=f"the clients' processes {started}")


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


async def remember(client: Client, value: str, **arguments: Any) -> list[str]:
    return structured(await client.call_tool("state_remember", {"value": value, **arguments}))


async def recall(client: Client, **arguments: Any) -> list[str]:
    return structured(await client.call_tool("state_recall", arguments))


async def whoami(client: Client, **arguments: Any) -> int:
    return structured(await client.call_tool("state_whoami", arguments))


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
    config = write_config(
        tmp_path,
        {"state": fixture_server("state")},
        admin_token=OPERATOR_TOKEN,
        auth={
            "tokens": [
                {"token": ALICE_TOKEN, "principal": "alice", "agents": ["*"]},
                {"token": BOB_TOKEN, "principal": "bob", "agents": ["*"]},
            ]
        },
    )
    alice_headers = {"Authorization": f"Bearer {ALICE_TOKEN}"}
    bob_headers = {"Authorization": f"Bearer {BOB_TOKEN}"}
    async with running_proxy(config) as secured:
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


# mcp-remote, driven over stdio by the Python SDK.

PROTOCOLS: Final = ("legacy", "auto")
TRANSPORTS: Final = ("http-only", "sse-only", "http-first", "sse-first")


@dataclass
class McpRemoteRun:
    """One mcp-remote process: the client that drives it, and the file its stderr goes to."""

    client: Client
    log: Path

    def bridged_to_2026(self) -> bool:
        """Whether mcp-remote speaks 2026-07-28 to the proxy (it answers the local handshake itself then)."""
        return f"Remote server speaks MCP {MODERN}" in self.log.read_text()


@asynccontextmanager
async def mcp_remote(
    proxy: ProxyProcess, home: Path, protocol: str, transport: str, header: str | None = None
) -> AsyncGenerator[McpRemoteRun]:
    """mcp-remote bridging stdio to the proxy (its SSE endpoint for the sse-* strategies), with the Python SDK's
    stdio client on the other end; stops the process on exit (the SDK does) and checks that it is gone."""
    url = sse_url(proxy) if transport.startswith("sse") else proxy.url
    arguments = [str(NODE_BIN / "mcp-remote"), url, "--protocol", protocol, "--transport", transport]
    parameters = StdioServerParameters(
        command=str(NODE_BIN / "node"),
        args=[*arguments, *(["--header", header] if header else [])],
        env=node_environment(HOME=str(home), MCP_REMOTE_CONFIG_DIR=str(home / "mcp-remote")),
    )
    log = home / f"mcp-remote-{secrets.token_hex(3)}.log"
    async with nothing_left_behind(proxy):
        with log.open("w") as stderr:
            try:
                async with Client(stdio_client(parameters, errlog=stderr), mode="legacy") as client:
                    yield McpRemoteRun(client, log)
            except Exception as error:
                error.add_note(f"mcp-remote {' '.join(arguments[1:])} wrote on stderr:\n{log.read_text()}")
                raise


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_mcp_remote_keeps_its_state_across_calls(
    proxy: ProxyProcess, probe: Probe, tmp_path: Path, protocol: str, transport: str
) -> None:
    one, two = probe.value("one"), probe.value("two")
    async with mcp_remote(proxy, tmp_path, protocol, transport) as remote:
        assert probe.mine(await remember(remote.client, one)) == [one]
        assert probe.mine(await remember(remote.client, two)) == [one, two]
        assert probe.mine(await recall(remote.client)) == [one, two]
        assert await whoami(remote.client) == await whoami(remote.client)
        assert remote.bridged_to_2026() == (protocol == "auto")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_mcp_remote_gets_its_state_back_in_a_new_process_that_sends_the_session_header(
    proxy: ProxyProcess, probe: Probe, session_name: str, tmp_path: Path, protocol: str, transport: str
) -> None:
    header, value = f"{HEADER}:{session_name}", probe.value("kept")
    async with mcp_remote(proxy, tmp_path, protocol, transport, header) as first:
        assert await remember(first.client, value) == [value]
        upstream = await whoami(first.client)
    async with mcp_remote(proxy, tmp_path, protocol, transport, header) as second:
        assert await recall(second.client) == [value]
        assert await whoami(second.client) == upstream
        assert second.bridged_to_2026() == (protocol == "auto")


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


# The MCP Inspector CLI: one process per call, and mcpdo's daemon holding one connection.


@pytest.mark.parametrize("key", KEYS)
async def test_inspector_cli_calls_in_separate_processes_share_state_only_through_a_session_key(
    proxy: ProxyProcess, probe: Probe, session_name: str, tmp_path: Path, key: Key
) -> None:
    value = probe.value("kept")

    async def tool(name: str, arguments: dict[str, Any], key: Key | None) -> Any:
        header = ["--header", f"{HEADER}: {session_name}"] if key == "header" else []
        called = await inspector(
            tmp_path,
            proxy.url,
            "--method",
            "tools/call",
            "--tool-name",
            name,
            "--tool-args-json",
            json.dumps(keyed(arguments, key, session_name)),
            *header,
        )
        assert not called.get("isError"), called
        return called["structuredContent"]["result"]

    assert await tool("state_remember", {"value": value}, key) == [value]
    assert await tool("state_recall", {}, key) == [value]
    assert await tool("state_recall", {}, None) == [], "a keyless call is a fresh connection, with a fresh session"


async def test_mcpdo_keeps_one_connections_state_across_invocations_and_a_named_one_across_reconnects(
    proxy: ProxyProcess, probe: Probe, session_name: str, tmp_path: Path
) -> None:
    one, two, kept = probe.value("one"), probe.value("two"), probe.value("kept")

    async def tool(connection: str, name: str, **arguments: Any) -> Any:
        output = await mcpdo(
            tmp_path,
            "--connection",
            connection,
            "--format",
            "json",
            "tools/call",
            name,
            "--tool-args-json",
            json.dumps(arguments),
        )
        called = json.loads(output)
        assert not called.get("isError"), called
        return called["structuredContent"]["result"]

    await mcpdo(tmp_path, "connect", "--connection", "plain", proxy.url)
    daemon = re.search(r"Daemon pid (\d+)", await mcpdo(tmp_path, "daemon", "status"))
    assert daemon is not None
    daemon_pid = int(daemon.group(1))
    try:
        await tool("plain", "state_remember", value=one)
        assert await tool("plain", "state_remember", value=two) == [one, two]
        assert await tool("plain", "state_recall") == [one, two]

        header = f"{HEADER}: {session_name}"
        await mcpdo(tmp_path, "connect", "--connection", "named", proxy.url, "--header", header)
        assert await tool("named", "state_remember", value=kept) == [kept]
        await mcpdo(tmp_path, "disconnect", "named")
        await mcpdo(tmp_path, "connect", "--connection", "named-again", proxy.url, "--header", header)
        assert await tool("named-again", "state_recall") == [kept]
        assert await tool("plain", "state_recall") == [one, two]
    finally:
        os.kill(daemon_pid, signal.SIGTERM)
        await wait_until(lambda: not is_alive(daemon_pid), what="the mcpdo daemon to stop")
