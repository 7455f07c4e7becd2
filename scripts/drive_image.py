"""Drive a running mcpstore-proxy container with a real MCP client, as scripts/build_image.sh does once it is up.

The container serves tests/fixtures/stateful_server.py as the upstream `fixture`, behind a static bearer token
taken from the environment variable named by --token-env. Checks, each printed as one line:

- `/ready` answers 200 (within a deadline: the upstream starts in the background), and `/health` and `/ready`
  answer a request whose Host is a pod address, as a kubelet's probe is;
- a request without the token is refused with 401 and a `WWW-Authenticate: Bearer` challenge;
- with the token, the SDK client lists the fixture's tools, `fixture_echo` answers, and the session keeps its
  state from one call to the next (`fixture_remember`, then `fixture_recall`); with --demo, the same of the demo
  upstreams that ship in the image (deploy/kubernetes/configmap.yaml serves them).

Exits non-zero with the failed check's message.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client

_READY_DEADLINE_SECONDS = 60.0
_POD_ADDRESS = "10.1.2.3"
"""Only ever a header value: nothing is sent there."""


class CheckFailedError(Exception):
    """One of the checks did not hold; the message says which and what came instead."""


async def wait_ready(base_url: str) -> float:
    """Seconds until `/ready` answered 200."""
    started = time.monotonic()
    last = "no answer"
    async with httpx2.AsyncClient(timeout=5) as http:
        while time.monotonic() - started < _READY_DEADLINE_SECONDS:
            try:
                answer = await http.get(f"{base_url}/ready")
            except httpx2.TransportError as error:
                last = f"{type(error).__name__}"
            else:
                if answer.status_code == 200:
                    return time.monotonic() - started
                last = f"HTTP {answer.status_code}"
            await anyio.sleep(0.2)
    raise CheckFailedError(f"{base_url}/ready did not answer 200 within {_READY_DEADLINE_SECONDS:g} s (last: {last})")


async def check_probes_answer_a_kubelet(base_url: str) -> str:
    """Kubernetes probes name the pod's address in `Host`, which no config lists: the probes must answer anyway."""
    statuses: list[str] = []
    async with httpx2.AsyncClient(timeout=10) as http:
        for path in ("/health", "/ready"):
            answer = await http.get(f"{base_url}{path}", headers={"Host": f"{_POD_ADDRESS}:8765"})
            if answer.status_code != 200:
                raise CheckFailedError(f"{path} with a pod address as Host answered HTTP {answer.status_code}")
            statuses.append(f"{path} 200")
    return f"probes with a pod address as Host (as a kubelet asks): {', '.join(statuses)}"


async def check_refused_without_token(base_url: str) -> str:
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{base_url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
    challenge = answer.headers.get("www-authenticate", "")
    if answer.status_code != 401 or not challenge.startswith("Bearer"):
        got = f"HTTP {answer.status_code} ({challenge!r})"
        raise CheckFailedError(f"a request without a token got {got}, not 401 with a Bearer challenge")
    return f"a request without the token: HTTP 401, WWW-Authenticate: {challenge.split(' ')[0]}"


@asynccontextmanager
async def mcp_client(base_url: str, token: str) -> AsyncGenerator[Client]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=120.0)) as http,
        # legacy: the handshake era, whose session keeps the upstream state between calls
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode="legacy", cache=None) as client,
    ):
        yield client


async def tool_names(client: Client, *expected: str) -> list[str]:
    names = sorted(tool.name for tool in (await client.list_tools()).tools)
    missing = [name for name in expected if name not in names]
    if missing:
        raise CheckFailedError(f"tools/list has no {', '.join(missing)}: {names}")
    return names


async def check_fixture_calls(base_url: str, token: str) -> list[str]:
    """tests/fixtures/stateful_server.py served as `fixture`."""
    async with mcp_client(base_url, token) as client:
        names = await tool_names(client, "fixture_echo", "fixture_remember", "fixture_recall")
        greeting = "hello from the host"
        echoed = _text(await client.call_tool("fixture_echo", {"text": greeting}))
        if echoed != greeting:
            raise CheckFailedError(f"fixture_echo answered {echoed!r}, not {greeting!r}")
        await client.call_tool("fixture_remember", {"value": "kept"})
        recalled = _structured(await client.call_tool("fixture_recall", {}))
        if recalled != ["kept"]:
            raise CheckFailedError(f"fixture_recall answered {recalled!r} in the same session, not ['kept']")
        upstream_pid = _structured(await client.call_tool("fixture_whoami", {}))
    return [
        f"MCP client with the bearer token: {len(names)} tools listed",
        f"tools/call fixture_echo answered {echoed!r}",
        f"session state kept between calls (remember, then recall: {recalled}); upstream pid {upstream_pid}",
    ]


async def check_demo_calls(base_url: str, token: str) -> list[str]:
    """The demo upstreams that ship in the image (`notes` isolated, `counter` shared), as the bundled configs serve
    them."""
    async with mcp_client(base_url, token) as client:
        names = await tool_names(client, "notes_add_note", "notes_list_notes", "counter_increment")
        await client.call_tool("notes_add_note", {"text": "kept"})
        notes = _structured(await client.call_tool("notes_list_notes", {}))
        if notes != ["kept"]:
            raise CheckFailedError(f"notes_list_notes answered {notes!r} in the same session, not ['kept']")
        counted = _structured(await client.call_tool("counter_increment", {}))
    return [f"demo upstreams: {len(names)} tools listed, notes kept {notes} in the session, counter at {counted}"]


def _text(result: types.CallToolResult) -> str:
    if result.is_error:
        raise CheckFailedError(f"the tool call failed: {result.content}")
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


def _structured(result: types.CallToolResult) -> Any:
    if result.is_error or result.structured_content is None:
        raise CheckFailedError(f"the tool call failed or had no structured result: {result.content}")
    return result.structured_content.get("result", result.structured_content)


async def drive(base_url: str, token: str, *, demo: bool) -> None:
    ready_seconds = await wait_ready(base_url)
    print(f"/ready answered 200 after {ready_seconds:.1f} s")
    print(await check_probes_answer_a_kubelet(base_url))
    print(await check_refused_without_token(base_url))
    for line in await (check_demo_calls if demo else check_fixture_calls)(base_url, token):
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Drive a running mcpstore-proxy container with a real MCP client.")
    parser.add_argument("--url", required=True, help="the published address, e.g. http://127.0.0.1:41234")
    parser.add_argument("--token-env", required=True, help="the environment variable that holds the bearer token")
    parser.add_argument("--demo", action="store_true", help="the demo upstreams (notes, counter), not the fixture")
    arguments = parser.parse_args(argv)
    token = os.environ.get(arguments.token_env)
    if not token:
        print(f"drive_image: {arguments.token_env} is not set", file=sys.stderr)
        return 2
    try:
        anyio.run(functools.partial(drive, arguments.url.rstrip("/"), token, demo=arguments.demo))
    except CheckFailedError as failure:
        print(f"drive_image: FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
