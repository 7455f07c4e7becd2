"""A Streamable HTTP client that hangs up its request's stream has abandoned the request: cancel its forward.

The SDK keeps such a request running, for resumption; the proxy cancels it, which cancels it upstream. Only that
transport answers a request on its own POST: a legacy SSE POST is over at once (202), and 2026-07-28 requests are
cancelled by the SDK itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
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
    """While the block runs, the client hanging up (`http.disconnect`) cancels `scope`; and, given `keepalive`,
    each `keepalive_seconds` without an answer it is called (a comment line on the answer's event stream), as
    long as it says the answer is still to come.

    The watch starts only once the block has run for `_WATCH_AFTER_SECONDS` (see `deferred`): a hang-up is
    noticed at most that much later, which only delays the upstream's cancellation. One task for both, started
    by the event loop's one timer for deadlines: most calls are answered before either has anything to do.
    """

    __slots__ = ("_keepalive", "_keepalive_seconds", "_receive", "_scope")

    def __init__(
        self,
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        scope: Cancellable,
        *,
        after_seconds: float = _WATCH_AFTER_SECONDS,
        keepalive: Callable[[], Awaitable[bool]] | None = None,
        keepalive_seconds: float = math.inf,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(min(after_seconds, keepalive_seconds), loop)
        self._receive = receive
        self._scope = scope
        self._keepalive = keepalive
        self._keepalive_seconds = keepalive_seconds

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        # Nothing awaits this task: whatever ends the watch must end in the call's cancellation, not in the task.
        try:
            if self._keepalive is None:
                while (await self._receive()).get("type") != "http.disconnect":
                    pass
            else:
                await self._watch_and_keep_alive(self._keepalive)
        except Exception:  # a connection that cannot be read from, or written to, is a client gone
            logger.debug("the request's connection failed; taking it as a hang-up", exc_info=True)
        self._scope.cancel()

    async def _watch_and_keep_alive(self, keepalive: Callable[[], Awaitable[bool]]) -> None:
        wait: float | None = max(0.0, self._keepalive_seconds - self._after_seconds)  # from the block's start
        while True:
            try:
                async with asyncio.timeout(wait):
                    message = await self._receive()
            except TimeoutError:
                wait = self._keepalive_seconds if await keepalive() else None  # None: the answer went
                continue
            if message.get("type") == "http.disconnect":
                return


async def unless_client_hangs_up(
    receive: Callable[[], Awaitable[Mapping[str, Any]]], forward: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    outcome: dict[str, Any] = {}
    with anyio.CancelScope() as scope, HangUpWatch(receive, scope):
        outcome = await forward()
    if scope.cancelled_caught:
        raise MCPError(code=types.INVALID_REQUEST, message="the client hung up; the request was cancelled upstream")
    return outcome
