"""A Streamable HTTP client that hangs up its request's stream has abandoned the request: cancel its forward.

The SDK keeps such a request running, for resumption; the proxy cancels it, which cancels it upstream. Only that
transport answers a request on its own POST: a legacy SSE POST is over at once (202), and 2026-07-28 requests are
cancelled by the SDK itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio
from mcp import MCPError, types
from mcp.server.context import ServerRequestContext
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from mcpstore_proxy.compat import downstream_connection
from mcpstore_proxy.deferred import Deferred
from mcpstore_proxy.task_scope import Cancellable

__all__ = ["HangUpWatch", "hang_up_source", "unless_client_hangs_up"]

logger = logging.getLogger(__name__)

_WATCH_AFTER_SECONDS: Final = 0.05

Context = ServerRequestContext[Any, Any]


def hang_up_source(ctx: Context) -> Callable[[], Awaitable[Mapping[str, Any]]] | None:
    """The ASGI `receive` of a Streamable HTTP request whose POST stays open for its answer, else None."""
    if ctx.request is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    return ctx.request.receive if downstream_connection(ctx).session_id is not None else None


class HangUpWatch(Deferred):
    """While the block runs, the client hanging up (`http.disconnect`) cancels `scope`.

    The watch starts only once the block has run for `_WATCH_AFTER_SECONDS` (see `deferred`): a hang-up is
    noticed at most that much later, which only delays the upstream's cancellation.
    """

    __slots__ = ("_receive", "_scope")

    def __init__(
        self,
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        scope: Cancellable,
        *,
        after_seconds: float = _WATCH_AFTER_SECONDS,
    ) -> None:
        super().__init__(after_seconds)
        self._receive = receive
        self._scope = scope

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        # Nothing awaits this task: whatever ends the watch must end in the call's cancellation, not in the task.
        try:
            while (await self._receive()).get("type") != "http.disconnect":
                pass
        except Exception:  # a connection that cannot be read from is a client gone
            logger.debug("reading a request's connection failed; taking it as a hang-up", exc_info=True)
        self._scope.cancel()


async def unless_client_hangs_up(
    receive: Callable[[], Awaitable[Mapping[str, Any]]], forward: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    outcome: dict[str, Any] = {}
    with anyio.CancelScope() as scope, HangUpWatch(receive, scope):
        outcome = await forward()
    if scope.cancelled_caught:
        raise MCPError(code=types.INVALID_REQUEST, message="the client hung up; the request was cancelled upstream")
    return outcome
