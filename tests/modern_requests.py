"""2026-07-28 requests sent with plain HTTP, to see each answer's status and framing, and the same request sent to
the SDK (`TO_THE_SDK`: the lane never takes a request carrying an `Mcp-Session-Id`, and the SDK ignores that header
in this era)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx2

MODERN = "2026-07-28"
TO_THE_SDK = {"mcp-session-id": "not-a-session"}


def envelope(capabilities: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A request's `_meta` envelope: the version, the client's capabilities and identity, and `extra`."""
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": dict(capabilities or {}),
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        **extra,
    }


def call(name: str, arguments: Mapping[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """A `tools/call`'s params, its envelope given `meta`."""
    params: dict[str, Any] = {"name": name, "_meta": envelope(**meta)}
    if arguments is not None:
        params["arguments"] = dict(arguments)
    return params


async def post(url: str, params: Mapping[str, Any], *, request_id: Any = 1, **headers: str) -> httpx2.Response:
    """A 2026-07-28 `tools/call` with `params`, its routing headers as the SDK's client sends them."""
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(
            url,
            json={"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": dict(params)},
            headers={
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": MODERN,
                "mcp-method": "tools/call",
                "mcp-name": str(params["name"]),
                **headers,
            },
        )


def messages(response: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer, in a JSON body or on an event stream."""
    if response.headers["content-type"].startswith("application/json"):
        return [response.json()]
    lines = response.text.split("\r\n")
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]


async def post_listing(
    url: str,
    method: str,
    *,
    params: Mapping[str, Any] | None = None,
    request_id: Any = 1,
    headers: Mapping[str, str] | None = None,
) -> httpx2.Response:
    """A 2026-07-28 listing as the SDK's client sends it (its HTTP client accepts gzip)."""
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(
            url,
            json={
                "jsonrpc": "2.0",
                "id": request_id,
                "method": method,
                "params": dict(params if params is not None else {"_meta": envelope()}),
            },
            headers={
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": MODERN,
                "mcp-method": method,
                **(headers or {}),
            },
        )
