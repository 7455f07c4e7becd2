"""The calls a lane serves (the fast lane over HTTP, see `lane`, and the message lane over stdio and legacy SSE,
see `lane_messages`): each forwarded as work in flight, cancelled by `notifications/cancelled` naming it, answered
once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from functools import partial
from typing import Any, Final

from mcp import MCPError, types
from mcp.server.streamable_http import REQUEST_CANCELLED
from starlette.types import Receive

from mcpstore_proxy.downstream import Caller
from mcpstore_proxy.errors import ShuttingDownError, to_mcp_error
from mcpstore_proxy.hangup import HangUpWatch
from mcpstore_proxy.lane_wire import CallAnswer, RequestId, ToolCall, error_message
from mcpstore_proxy.operations import Operation, is_tool_error
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.server import ProxyServer
from mcpstore_proxy.task_scope import Cancellable

__all__ = ["LaneCalls"]

logger = logging.getLogger(__name__)

_NO_STATUSES: Final[Mapping[int, int]] = {}

_NO_WATCH: Final = nullcontext()


class LaneCalls:
    """The calls in a lane, by session and the client's id: what `notifications/cancelled` may cancel."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._calls: dict[tuple[str, RequestId], Cancellable] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def forwarded(
        self,
        answer: CallAnswer,
        caller: Caller,
        call: ClientCall,
        request: ToolCall,
        operation: Operation,
        cancellable_as: tuple[str, RequestId] | None,
        statuses: Mapping[int, int] = _NO_STATUSES,
        *,
        hang_up: Receive | None = None,
        keepalive: Callable[[], Awaitable[bool]] | None = None,
        keepalive_seconds: float = math.inf,
    ) -> dict[str, Any] | None:
        """Forward a call as work in flight, cancelled by `notifications/cancelled` naming it (`cancellable_as`:
        its session and id), or by its HTTP client hanging up (`hang_up`: its request's `receive`); its result, or
        None once it was answered otherwise (an error, with its HTTP status from `statuses`, a refusal, or its
        cancellation). A call silent for `keepalive_seconds` gets its answer as an event stream, with a comment
        line (`keepalive`) every `keepalive_seconds`, as the SDK answers a 2026-07-28 call, so that proxies and load
        balancers in between keep the connection."""
        server = self._server
        forward = partial(server.call_tool, caller, request.name, request.arguments, call)
        result: dict[str, Any] = {}
        try:
            # The drain's scope, cancelled also by notifications/cancelled, or by the client hanging up.
            with (
                server.drain.request_in(self._task()) as cancelled,
                _NO_WATCH
                if hang_up is None
                else HangUpWatch(
                    hang_up, cancelled, keepalive=keepalive, keepalive_seconds=keepalive_seconds, loop=self._loop
                ),
            ):
                if cancellable_as is not None:
                    self._calls[cancellable_as] = cancelled
                try:
                    result = await server.routed(forward)
                except MCPError as error:
                    status = statuses.get(error.error.code, 200)
                    await answer.finish(error_message(request.id, error.error), status=status)
                    return None
                except Exception:
                    logger.exception("the fast lane failed to forward a tools/call")
                    error = types.ErrorData(code=types.INTERNAL_ERROR, message="internal error in mcpstore-proxy")
                    await answer.finish(error_message(request.id, error))
                    return None
                finally:
                    if cancellable_as is not None:
                        self._calls.pop(cancellable_as, None)
        except ShuttingDownError as refused:
            error = to_mcp_error(refused).error
            await answer.finish(error_message(request.id, error), status=statuses.get(error.code, 200))
            return None
        if cancelled.cancelled_caught:
            operation.outcome = "cancelled"
            error = types.ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
            await answer.finish(error_message(request.id, error), as_stream=True)
            return None
        operation.outcome = "error" if is_tool_error(result) else "ok"
        return result

    def cancel(self, session_id: str, request_id: RequestId) -> bool:
        """Cancel the call `request_id` in the session (its client's `notifications/cancelled`); False if no call in
        the lane has that id."""
        scope = self._calls.get((session_id, request_id))
        if scope is None:
            return False
        scope.cancel()
        return True

    def _task(self) -> asyncio.Task[object]:
        """The request's own task (uvicorn runs each request in one), found through the loop remembered, as
        asking for the running loop costs a system call on 3.11; a lane moved to another loop finds its new one."""
        task = asyncio.current_task(self._loop) if self._loop is not None else None
        if task is None:
            self._loop = asyncio.get_running_loop()
            task = asyncio.current_task(self._loop)
            assert task is not None  # a coroutine run by asyncio
        return task
