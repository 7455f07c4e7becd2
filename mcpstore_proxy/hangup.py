"""A Streamable HTTP client that hangs up its request's stream has abandoned the request: cancel its forward.

The SDK keeps such a request running, for resumption; the proxy cancels it, which cancels it upstream. Only that
transport answers a request on its own POST: a legacy SSE POST is over at once (202), and 2026-07-28 requests are
cancelled by the SDK itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio
from mcp import MCPError, types
from mcp.server.context import ServerRequestContext
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from mcpstore_proxy.compat import downstream_connection

__all__ = ["cancelling_on_hang_up", "hang_up_source", "unless_client_hangs_up"]

Context = ServerRequestContext[Any, Any]


def hang_up_source(ctx: Context) -> Callable[[], Awaitable[Mapping[str, Any]]] | None:
    """The ASGI `receive` of a Streamable HTTP request whose POST stays open for its answer, else None."""
    if ctx.request is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    return ctx.request.receive if downstream_connection(ctx).session_id is not None else None


@contextmanager
def cancelling_on_hang_up(
    receive: Callable[[], Awaitable[Mapping[str, Any]]], scope: anyio.CancelScope
) -> Generator[None]:
    """While the block runs, the client hanging up (`http.disconnect`) cancels `scope`.

    The watch is a bare asyncio task, cancelled when the block ends: these requests are only ever served by
    uvicorn on asyncio, and an anyio task group per call cost several times as much.
    """

    async def watch() -> None:
        while (await receive()).get("type") != "http.disconnect":
            pass
        scope.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


async def unless_client_hangs_up(
    receive: Callable[[], Awaitable[Mapping[str, Any]]], forward: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    outcome: dict[str, Any] = {}
    with anyio.CancelScope() as scope, cancelling_on_hang_up(receive, scope):
        outcome = await forward()
    if scope.cancelled_caught:
        raise MCPError(code=types.INVALID_REQUEST, message="the client hung up; the request was cancelled upstream")
    return outcome
