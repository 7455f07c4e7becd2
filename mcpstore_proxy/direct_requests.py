"""Requests the proxy sends to an upstream itself, on the streams its SDK `ClientSession` runs on.

A forwarded call needs none of what the SDK's client adds to a request: a
typed result validated against the protocol, a span, a clock, a memory stream
per request. `DirectRequests` writes the request to the session's write stream
under an id of its own (from a range the SDK's counter never reaches) and takes
the answer off the read stream (`transports.SessionReadStream` hands it over)
before the `ClientSession` sees it, so the
result reaches the caller exactly as the upstream sent it. Everything else
on the stream (log entries, sampling, list changes, answers to the SDK's own
requests) still goes to the `ClientSession`, in order.

Abandoning a request (cancelled, or past its deadline) tells the upstream with
`notifications/cancelled`, as the SDK does. When the session ends, every
request still waiting fails with the SDK's `CONNECTION_CLOSED` error.
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import suppress
from typing import Any, Final

import anyio
from mcp import MCPError, types
from mcp.shared.message import SessionMessage

from mcpstore_proxy.compat import WriteStream

__all__ = ["DirectRequests"]

_FIRST_ID: Final = 1 << 40
"""Far above any id the SDK's counter (from 1, one per request) will reach; still exact in JavaScript."""
_CANCEL_WRITE_SECONDS: Final = 1.0


_Answer = types.JSONRPCResponse | types.JSONRPCError | None
"""What a waiting request gets: its answer, or None when the session ended first."""


class DirectRequests:
    """Sends requests on a session's write stream and takes their answers off its read stream."""

    def __init__(self, write_stream: WriteStream[SessionMessage]) -> None:
        self._write_stream = write_stream
        self._ids = itertools.count(_FIRST_ID)
        self._waiting: dict[int, asyncio.Future[_Answer]] = {}
        self._is_closed = False

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """Send one request and return its result as the upstream sent it.

        Raises:
            MCPError: the upstream's error answer, or `CONNECTION_CLOSED` when the session ended first.
        """
        if self._is_closed:
            raise _closed()
        request_id = next(self._ids)
        # A bare future: the stdio upstream this serves is asyncio's already, and an anyio Event costs 5x as much.
        waiting = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        message = (
            types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)
            if params is not None  # an explicit None would be written as "params": null, which JSON-RPC forbids
            else types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)
        )
        try:
            try:
                await self._write_stream.send(SessionMessage(message))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise _closed() from None
            try:
                answer = await waiting
            except anyio.get_cancelled_exc_class():
                with anyio.move_on_after(_CANCEL_WRITE_SECONDS, shield=True):
                    await self._cancel_upstream(request_id)
                raise
        finally:
            self._waiting.pop(request_id, None)
        if isinstance(answer, types.JSONRPCResponse):
            return answer.result
        if answer is None:
            raise _closed()
        raise MCPError(code=answer.error.code, message=answer.error.message, data=answer.error.data)

    def close(self) -> None:
        """The session ended: fail every request still waiting, and any sent later."""
        self._is_closed = True
        for waiting in self._waiting.values():
            _answer(waiting, None)
        self._waiting.clear()

    def take(self, item: SessionMessage | Exception) -> bool:
        """Whether `item` answers one of these requests (and was handed to it)."""
        if isinstance(item, Exception):
            return False
        message = item.message
        if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError) or type(message.id) is not int:
            return False
        waiting = self._waiting.pop(message.id, None)
        if waiting is None:
            return message.id >= _FIRST_ID  # a late answer to one we gave up: nobody else is waiting for it
        _answer(waiting, message)
        return True

    async def _cancel_upstream(self, request_id: int) -> None:
        notice = types.JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/cancelled",
            params={"requestId": request_id, "reason": "the client's call was abandoned"},
        )
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # if gone, its work went with it
            await self._write_stream.send(SessionMessage(notice))


def _answer(waiting: asyncio.Future[_Answer], answer: _Answer) -> None:
    if not waiting.done():  # cancelled: its request is being withdrawn
        waiting.set_result(answer)


def _closed() -> MCPError:
    return MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")
