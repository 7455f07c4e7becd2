"""A Streamable HTTP client that hangs up its request's stream has abandoned the request: cancel its forward.

The SDK keeps such a request running, for resumption; the proxy cancels it, which cancels it upstream. Only that
transport answers a request on its own POST: a legacy SSE POST is over at once (202), and 2026-07-28 requests are
cancelled by the SDK itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from mcp import MCPError, types
from mcp.server.context import ServerRequestContext
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from mcpstore_proxy.compat import downstream_connection

__all__ = ["hang_up_source", "unless_client_hangs_up"]

Context = ServerRequestContext[Any, Any]


def hang_up_source(ctx: Context) -> Callable[[], Awaitable[Mapping[str, Any]]] | None:
    """The ASGI `receive` of a Streamable HTTP request whose POST stays open for its answer, else None."""
    if ctx.request is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    return ctx.request.receive if downstream_connection(ctx).session_id is not None else None


async def unless_client_hangs_up(
    receive: Callable[[], Awaitable[Mapping[str, Any]]], forward: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    outcome: list[dict[str, Any]] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive()).get("type") != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            outcome.append(await forward())
        except Exception as error:  # noqa: BLE001  # re-raised below, outside the task group, unwrapped
            failure.append(error)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not outcome:
        raise MCPError(code=types.INVALID_REQUEST, message="the client hung up; the request was cancelled upstream")
    return outcome[0]
