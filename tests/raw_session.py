"""A Streamable HTTP session driven with plain HTTP requests, to see each answer's status and framing."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2

from tests.inprocess import InProcessProxy, running_app
from tests.support import admin, admin_token_of, fixture_server, write_config

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789"
OPS = "ops-token-0123456789"


class RawSession:
    """A Streamable HTTP session driven with plain HTTP requests, to see each answer's framing."""

    def __init__(self, http: httpx2.AsyncClient, url: str, accept: str = f"{JSON}, {EVENT_STREAM}") -> None:
        self._http = http
        self.url = url
        self.headers = {"Accept": accept, "Content-Type": JSON}

    async def open(self, capabilities: dict[str, Any] | None = None) -> None:
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": capabilities or {},
            "clientInfo": {"name": "raw", "version": "1"},
        }
        opened = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        assert opened.status_code == 200, opened.text
        self.headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def post(self, message: Any, **headers: str) -> httpx2.Response:
        return await self._http.post(self.url, json=message, headers=self.headers | headers)

    async def call_tool(self, request_id: int, name: str, arguments: dict[str, Any], **meta: Any) -> httpx2.Response:
        return await self.post(tool_call(request_id, name, arguments, **meta))


@asynccontextmanager
async def opened_session(
    config: Path, *, keep_alive: bool = True
) -> AsyncGenerator[tuple[InProcessProxy, httpx2.AsyncClient, RawSession]]:
    """The proxy of `config` served in process, a plain HTTP client, and a session it opened. Without
    `keep_alive`, each request has a connection of its own: a test that moves the proxy's clock past uvicorn's
    keep-alive timeout has it close idle connections, and the client could be writing on one as it does."""
    limits = httpx2.Limits() if keep_alive else httpx2.Limits(max_keepalive_connections=0)
    async with running_app(config) as proxy, httpx2.AsyncClient(timeout=30, limits=limits) as http:
        session = RawSession(http, proxy.url)
        await session.open()
        yield proxy, http, session


def tool_call(request_id: int | str, name: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def media_type(response: httpx2.Response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


def events_of(response: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an event-stream body, in order."""
    return [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines() if line.startswith("data: ")]


async def lane_calls(proxy: InProcessProxy, config: Path) -> int:
    """How many requests the proxy's fast lane took (`fast_lane_calls` in `/admin/status`)."""
    return await _status_count(proxy, config, "fast_lane_calls")


async def lane_streams(proxy: InProcessProxy, config: Path) -> int:
    """How many standing event streams the proxy's fast lane took (`fast_lane_streams` in `/admin/status`)."""
    return await _status_count(proxy, config, "fast_lane_streams")


async def _status_count(proxy: InProcessProxy, config: Path, name: str) -> int:
    token = admin_token_of(config)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status = await admin(proxy.port, "GET", "/status", **headers)
    assert status.status_code == 200, status.text
    count: int = status.json()[name]
    return count


def guarded_config(tmp_path: Path) -> Path:
    """A config of the stateful fixture upstream behind tokens: ALICE (principal alice), BOB (bob), OPS (admin)."""
    tokens = [
        {"token": ALICE, "principal": "alice"},
        {"token": BOB, "principal": "bob"},
        {"token": OPS, "principal": "ops", "admin": True},
    ]
    return write_config(tmp_path, {"state": fixture_server("state")}, auth={"tokens": tokens})


async def next_message(lines: AsyncIterator[str]) -> dict[str, Any]:
    """The next JSON-RPC message on an event stream's lines."""
    async for line in lines:
        if line.startswith("data: "):
            message: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return message
    raise AssertionError("the event stream ended early")
