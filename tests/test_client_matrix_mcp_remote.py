"""The client matrix, mcp-remote: in every `--protocol` and `--transport`, driven over stdio by the Python SDK,
against a real proxy process. The upstream's state lives across calls within one mcp-remote process, and comes back
in a new process that sends the `X-MCPStore-Session` header. tests/matrix.py holds the shared proxy and explains who
keeps what.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.matrix import HEADER, MODERN, Probe, nothing_left_behind, recall, remember, sse_url, whoami

# The module's fixtures, which pytest finds by name.
from tests.matrix import anyio_backend as anyio_backend
from tests.matrix import probe as probe
from tests.matrix import proxy as proxy
from tests.matrix import session_name as session_name
from tests.support import NODE_BIN, ProxyProcess, node_environment

pytestmark = pytest.mark.anyio


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
