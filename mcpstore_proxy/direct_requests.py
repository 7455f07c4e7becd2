"""Requests the proxy sends to an upstream itself, on the streams its session's client runs on.

A forwarded call needs none of what the SDK's client adds to a request: a
typed result validated against the protocol, a span, a clock, a memory stream
per request. `DirectRequests` writes the request to the session's write stream
under an id of its own and takes the answer off the read stream
(`transports.SessionReadStream` hands it over) before the session's client sees
it, so the result reaches the caller exactly as the upstream sent it. Its ids
are strings, `mcpstore-1`, `mcpstore-2`, ...: the SDK's client numbers its own
requests, so the two never meet, and every MCP server must take string ids,
while a numeric id past 32 bits could break a server that keeps them narrower. Everything else
on the stream (log entries, sampling, list changes, answers to the SDK's own
requests) still goes to the session's client, in order.

The proxy's own client (`upstream_client.LeanClient`) sends everything through it: its requests (with a
progress token, its id, when the caller wants progress reports, which `progress_of` finds), its notifications and
its answers to the upstream's requests.

Each request has a deadline (the upstream's `call_timeout_seconds`); a request
past it fails with `TimeoutError`. The deadlines are kept by the event loop's
one timer for them (`deadlines`), not a timer or a cancel scope per request.
Abandoning a request (cancelled, or past its deadline) tells the upstream with
`notifications/cancelled`, as the SDK does.
When the session ends, every request still waiting fails with the SDK's
`CONNECTION_CLOSED` error.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any, Final, TypeGuard, cast

import anyio
from mcp import MCPError, types
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.message import SessionMessage

from mcpstore_proxy.compat import WriteStream
from mcpstore_proxy.deadlines import Deadlines
from mcpstore_proxy.stdio_pipes import StdinMessages

__all__ = ["DirectRequests"]

_ID_PREFIX: Final = "mcpstore-"
"""The proxy's own request ids upstream; the SDK's client uses integers."""
_CANCEL_WRITE_SECONDS: Final = 1.0
_SHOWN_CHARACTERS: Final = 200
"""How much of a malformed answer its error shows."""


_Answer = types.JSONRPCResponse | types.JSONRPCError | dict[str, Any] | None
"""What a waiting request gets: its answer, typed by the SDK or as parsed from the line (`take_raw`), or None
when the session ended first."""


class DirectRequests:
    """Sends requests on a session's write stream and takes their answers off its read stream."""

    def __init__(self, write_stream: WriteStream[SessionMessage]) -> None:
        self._write_stream = write_stream
        self._stdin = write_stream if isinstance(write_stream, StdinMessages) else None
        """Where a request goes as orjson writes it, past the SDK's models (an upstream over stdio)."""
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[asyncio.Future[_Answer], float]] = {}
        """Each request waiting for its answer: the future it gets it on, and its deadline (the loop's clock)."""
        self._deadlines: Deadlines | None = None
        """Its event loop's timer for deadlines (found at the first request)."""
        self._is_closed = False
        self._progress: dict[str, ProgressFnT] | None = None
        """The requests waiting that asked for progress reports, by id (their progress token)."""

    async def request(
        self, method: str, params: dict[str, Any] | None, *, timeout: float, on_progress: ProgressFnT | None = None
    ) -> dict[str, Any]:
        """Send one request and return its result as the upstream sent it; with `on_progress`, ask for progress
        reports under its id, which whoever reads the session's notifications gives it (`progress_of`).

        Raises:
            MCPError: the upstream's error answer, or `CONNECTION_CLOSED` when the session ended first.
            TimeoutError: no answer within `timeout` seconds (the request is then cancelled upstream).
        """
        if self._is_closed:
            raise _closed()
        request_id = f"{_ID_PREFIX}{next(self._ids)}"
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = Deadlines.of(asyncio.get_running_loop())
        loop = deadlines.loop  # not asked for again: on 3.11 that is a system call (getpid) each time
        # A bare future: this upstream is asyncio's already, and an anyio Event costs 5x as much.
        waiting: asyncio.Future[_Answer] = loop.create_future()
        deadline = loop.time() + timeout
        self._waiting[request_id] = (waiting, deadline)
        deadlines.watch(self, deadline)
        if on_progress is not None:
            params = _with_progress_token(params, request_id)
            if self._progress is None:
                self._progress = {}
            self._progress[request_id] = on_progress
        try:
            try:
                sending = self._sent(request_id, method, params, deadline)
                if sending is not None:
                    await sending
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise _closed() from None
            try:
                answer = await waiting
            except (anyio.get_cancelled_exc_class(), TimeoutError):
                with anyio.move_on_after(_CANCEL_WRITE_SECONDS, shield=True):
                    await self._cancel_upstream(request_id)
                raise
        finally:
            self._waiting.pop(request_id, None)
            if on_progress is not None and self._progress is not None:
                self._progress.pop(request_id, None)
                if not self._progress:
                    self._progress = None
            if waiting.done() and not waiting.cancelled():
                waiting.exception()  # retrieved: the deadline may have passed while the request was being sent
        return _result_of(answer)

    def expire_due(self, due: float) -> float:
        """Fail the requests whose deadline is `due` or earlier (the loop's clock, as `Deadlines` asks); the next
        deadline of the rest, or `math.inf`."""
        earliest = math.inf
        for waiting, deadline in self._waiting.values():
            if deadline <= due:
                if not waiting.done():
                    waiting.set_exception(TimeoutError())
            elif deadline < earliest:
                earliest = deadline
        return earliest

    def progress_of(self, token: object) -> ProgressFnT | None:
        """Where the progress reported under `token` goes: the request waiting under that id that asked for it."""
        return self._progress.get(token) if self._progress is not None and type(token) is str else None

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        """Send a notification (dropped, as the SDK's client drops it, once the session is gone)."""
        notification: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            notification["params"] = params
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._written(notification)

    async def answer(
        self, request_id: types.RequestId, *, result: dict[str, Any] | None = None, error: types.ErrorData | None = None
    ) -> None:
        """Answer a request the upstream sent (dropped once the session is gone: nobody is left to read it)."""
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if error is not None:
            answer["error"] = error.model_dump(by_alias=True, mode="json", exclude_none=True)
        else:
            answer["result"] = result if result is not None else {}
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._written(answer)

    async def _written(self, message: dict[str, Any]) -> None:
        if self._stdin is not None:
            sending = self._stdin.send_json(message)
            if sending is not None:
                await sending
        else:
            await self._write_stream.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))

    def _sent(
        self, request_id: str, method: str, params: dict[str, Any] | None, deadline: float
    ) -> Awaitable[None] | None:
        """Send the request: at once over stdio where the pipe takes it (None), else what to await for it."""
        if self._stdin is not None:
            request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
            if params is not None:  # an explicit None would be written as "params": null, which JSON-RPC forbids
                request["params"] = params
            return self._stdin.send_json(request, deadline=deadline)
        return self._send_typed(request_id, method, params, deadline)

    async def _send_typed(self, request_id: str, method: str, params: dict[str, Any] | None, deadline: float) -> None:
        message = (
            types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)
            if params is not None
            else types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)
        )
        with anyio.fail_at(deadline):
            await self._write_stream.send(SessionMessage(message))

    def close(self) -> None:
        """The session ended: fail every request still waiting, and any sent later."""
        self._is_closed = True
        if self._deadlines is not None:
            self._deadlines.forget(self)
        for waiting, _ in self._waiting.values():
            if not waiting.done():
                waiting.set_result(None)
        self._waiting.clear()

    def take(self, item: SessionMessage | Exception) -> bool:
        """Whether `item` answers one of these requests (and was handed to it)."""
        if isinstance(item, Exception):
            return False
        message = item.message
        if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError) or not _is_ours(message.id):
            return False
        return self._hand_over(message.id, message)

    def take_raw(self, message: dict[str, Any]) -> bool:
        """Whether `message`, a line as parsed from JSON, answers one of these requests (and was handed to it)."""
        request_id = message.get("id")
        if not _is_ours(request_id) or "method" in message:
            return False
        return self._hand_over(request_id, message)

    def _hand_over(self, request_id: str, answer: _Answer) -> bool:
        """Always True: an id of ours that nobody waits for any more answers a request given up (dropped here)."""
        waiting = self._waiting.pop(request_id, None)
        if waiting is not None and not waiting[0].done():  # done: cancelled, or past its deadline
            waiting[0].set_result(answer)
        return True

    async def _cancel_upstream(self, request_id: str) -> None:
        notice = types.JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/cancelled",
            params={"requestId": request_id, "reason": "the client's call was abandoned"},
        )
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # if gone, its work went with it
            await self._write_stream.send(SessionMessage(notice))


def _with_progress_token(params: dict[str, Any] | None, token: str) -> dict[str, Any]:
    """`params` asking for progress reports under `token` (a copy: the caller's are left as they were)."""
    meta: object = params.get("_meta") if params else None
    merged: dict[str, Any] = {**cast(dict[str, Any], meta)} if isinstance(meta, dict) else {}
    merged["progressToken"] = token
    return {**(params or {}), "_meta": merged}


def _is_ours(request_id: object) -> TypeGuard[str]:
    return type(request_id) is str and request_id.startswith(_ID_PREFIX)


def _result_of(answer: _Answer) -> dict[str, Any]:
    """The result an answer carries.

    Raises:
        MCPError: the upstream's error; CONNECTION_CLOSED for no answer; INTERNAL_ERROR for an answer that is
            neither a result object nor an error (it is not passed on as if it were one).
    """
    if not isinstance(answer, dict):
        if answer is None:
            raise _closed()
        if isinstance(answer, types.JSONRPCResponse):
            return answer.result
        raise MCPError(code=answer.error.code, message=answer.error.message, data=answer.error.data)
    result: object = answer.get("result")  # a line as parsed from JSON (`take_raw`): the usual case
    error: object = answer.get("error")
    if type(result) is dict and error is None:
        found: dict[str, Any] = result  # pyright: ignore[reportUnknownVariableType]  # no cast(): a call
        return found
    if isinstance(error, dict) and result is None:
        fields = cast(dict[str, Any], error)
        code, message = fields.get("code"), fields.get("message")
        if type(code) is int and type(message) is str:
            raise MCPError(code=code, message=message, data=fields.get("data"))
    shown = repr(answer)
    raise MCPError(
        code=types.INTERNAL_ERROR,
        message="the upstream answered with neither a result object nor a JSON-RPC error: "
        + (shown if len(shown) <= _SHOWN_CHARACTERS else shown[:_SHOWN_CHARACTERS] + "..."),
    )


def _closed() -> MCPError:
    return MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")
