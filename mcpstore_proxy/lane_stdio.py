"""The stdio lane: a `tools/call` or listing from the client of `mcpstore-proxy stdio` (Claude Desktop, for one),
served without the SDK's server stack, as the fast lane (see `lane`) serves one over HTTP.

Through the SDK, each line is validated into pydantic models on its way in and the result validated and dumped
again on its way out, in a task per request: about 1.5 ms of proxy CPU for a small call, 20 ms for a 1 MB
result and 5 ms for a listing of 1,000 tools. The lane parses the line once, routes the call through the very same
code as the SDK's handler (`ProxyServer.call_tool` and `routed`, in flight for the drain, see `lane_calls`), and
writes the upstream's result, or the catalog's listing already on the wire (see `listings`), as one line.

What takes the lane, with tracing off: from a handshake-era client, once its connection was adopted
(`notifications/initialized`, or its first request), one JSON-RPC `tools/call` (well formed, see
`lane_wire.tool_call`) or listing, and the client's answers to the questions asked during such a call (ids
`mcpstore-N`, see `lane_questions`); from a 2026-07-28 client, a call or listing on `lane_modern`'s conditions
but for the HTTP headers (a pipe has none), answered in that era's shape; and `notifications/cancelled` for a call
in the lane, which is then never answered (as the SDK's dispatcher never answers a request its peer cancelled).
The client's first request decides the pipe's era, as the SDK's loop decides it, and is the SDK's. Everything
else goes to the SDK as it came, and every line, the lane's and the SDK's, goes out through the transport's one
writer (see `stdio`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, cast

import anyio
import anyio.abc
from mcp import MCPError, types
from mcp.server.connection import Connection
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS
from mcp_types import PROTOCOL_VERSION_META_KEY

from mcpstore_proxy.downstream import Caller
from mcpstore_proxy.json_bytes import from_json
from mcpstore_proxy.lane_calls import LaneCalls
from mcpstore_proxy.lane_modern import ModernCalls
from mcpstore_proxy.lane_questions import LaneQuestions
from mcpstore_proxy.lane_wire import (
    AnswerStream,
    RequestId,
    ToolCall,
    cancelled_id,
    error_message,
    is_id,
    progress_reporter,
    to_json,
    tool_call,
)
from mcpstore_proxy.listings import LISTINGS
from mcpstore_proxy.operations import Operation
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.rounds import Unaskable
from mcpstore_proxy.server import ProxyServer

__all__ = ["Reply", "StdioLane"]

Reply = Callable[[bytes], Awaitable[None]]
"""Write one message, already in JSON, to the client (the transport adds the line's end)."""

_PIPE: Final = "stdio"
"""The one session of the pipe, as the lane's calls and questions are keyed (by session, then id)."""
_HANDSHAKE_VERSIONS: Final = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)
_INTERNAL_ERROR: Final = types.ErrorData(code=types.INTERNAL_ERROR, message="internal error in mcpstore-proxy")

logger = logging.getLogger(__name__)


class StdioLane:
    """Takes the lines of the stdio client that it serves itself (`take`), while `running`."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._calls = LaneCalls(server)
        self._questions = LaneQuestions()
        self._modern = ModernCalls(server)
        self._is_modern: bool | None = None
        """The pipe's era, once its first request said it (see `take`)."""
        self._answers: dict[RequestId, _LineAnswer] = {}
        """The calls taken and not yet answered, by the client's id: what its `notifications/cancelled` withdraws."""
        self._tasks: anyio.abc.TaskGroup | None = None
        self.calls_served = 0
        """Calls the lane took."""
        self.listings_served = 0
        """Listings the lane answered."""

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[None]:
        """Serve what `take` takes until the block ends, then cancel what is left (the client is gone, or the
        drain let it finish first)."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                yield
            finally:
                self._tasks = None
                tasks.cancel_scope.cancel()

    def take(self, line: bytes, reply: Reply) -> bool:
        """Serve the message on `line` (answering with `reply`) if it is the lane's; False leaves it to the SDK.
        Never raises: it runs in the transport's reading task, whose end would end the pipe."""
        try:
            return self._take(line, reply)
        except Exception:
            logger.exception("the stdio lane failed to judge a message; the SDK answers it")
            return False

    def _take(self, line: bytes, reply: Reply) -> bool:
        tasks = self._tasks
        if tasks is None or self._server.traces:
            return False
        try:
            message = from_json(line)
        except ValueError:
            return False
        if type(message) is not dict:
            return False  # a batch, or not JSON-RPC: the SDK says what is wrong
        message = cast("dict[str, Any]", message)
        if message.get("jsonrpc") != "2.0":
            return False
        method = message.get("method")
        if self._is_modern is None:
            params: object = message.get("params")
            if type(method) is str and is_id(message.get("id")) and (params is None or type(params) is dict):
                # The client's first request decides the pipe's era, as the SDK's loop decides it; it is the SDK's.
                self._is_modern = method != "initialize" and _has_envelope(message.get("params"))
            return False
        if method is None:
            return self._questions.deliver(_PIPE, message)
        if method == "notifications/cancelled" and "id" not in message:
            return self._withdraw(message)
        if self._is_modern:
            return self._take_modern(tasks, message, reply)
        connection = self._server.downstream.pipe
        if connection is None or connection.protocol_version not in _HANDSHAKE_VERSIONS:
            return False  # not adopted yet (or any more)
        if method == "tools/call":
            call = tool_call(message)
            if call is None:
                return False
            answer = self._answers[call.id] = _LineAnswer(reply)
            tasks.start_soon(self._serve, connection, call, answer, None)
            return True
        request_id = message.get("id")
        params = message.get("params")
        if method in LISTINGS and is_id(request_id) and (params is None or type(params) is dict):
            tasks.start_soon(self._list, connection, method, request_id, reply)
            return True
        return False

    def _take_modern(self, tasks: anyio.abc.TaskGroup, message: dict[str, Any], reply: Reply) -> bool:
        """A 2026-07-28 call or listing, on the conditions `lane_modern` gives (but for the HTTP headers: a pipe has
        none)."""
        modern = self._modern
        if modern.is_open and (call := modern.call(message, None)) is not None:
            answer = self._answers[call.call.id] = _LineAnswer(reply)
            tasks.start_soon(self._serve, call.connection, call.call, answer, call.version)
            return True
        if (listing := modern.listing(message, None)) is not None:
            tasks.start_soon(self._list, listing.connection, listing.method, listing.id, reply, listing.version)
            return True
        return False

    def _withdraw(self, message: dict[str, Any]) -> bool:
        """The client cancelled a call in the lane: cancel it upstream, and never answer it."""
        request_id = cancelled_id(message)
        answer = self._answers.get(request_id) if request_id is not None else None
        if request_id is None or answer is None:
            return False  # not the lane's: the SDK's, or none
        answer.withdraw()
        self._calls.cancel(_PIPE, request_id)  # not yet started: it finds itself withdrawn instead
        return True

    async def _serve(
        self, connection: Connection, request: ToolCall, answer: _LineAnswer, modern_version: str | None
    ) -> None:
        try:
            if answer.is_done:
                return  # withdrawn before it started
            await self._call(connection, request, answer, modern_version)
        except Exception:  # never into the lane's task group: that would end the pipe
            logger.exception("the stdio lane failed to serve a tools/call")
            await answer.finish(error_message(request.id, _INTERNAL_ERROR))
        finally:
            if self._answers.get(request.id) is answer:
                del self._answers[request.id]

    async def _call(
        self, connection: Connection, request: ToolCall, answer: _LineAnswer, modern_version: str | None
    ) -> None:
        """Forward a call; a 2026-07-28 one (`modern_version`) asks its client nothing, hears no log entries (none
        opted in to), and is answered in its era's shape, as the SDK answers it."""
        self.calls_served += 1
        if modern_version is None:
            caller = Caller(None, connection, connection.protocol_version)
            call = ClientCall(
                stream=self._questions.stream(answer, connection, _PIPE),
                connection=self._server.downstream.connection_channel(caller),
                progress=progress_reporter(answer, request.progress_token),
            )
        else:
            caller = Caller(None, connection, modern_version)
            call = ClientCall(
                stream=Unaskable(AnswerStream(answer, connection, log_entries=False)),
                connection=None,  # its key's listen streams, once `call_tool` resolved the key
                progress=progress_reporter(answer, request.progress_token),
            )
        operation = Operation("tools/call", "", None)
        result = await self._calls.forwarded(answer, caller, call, request, operation, (_PIPE, request.id))
        if result is None:
            return
        if modern_version is not None:
            try:
                result = self._modern.result(result, modern_version)
            except MCPError as error:
                await answer.finish(error_message(request.id, error.error))
                return
        await answer.finish({"jsonrpc": "2.0", "id": request.id, "result": result})

    async def _list(
        self,
        connection: Connection,
        method: str,
        request_id: RequestId,
        reply: Reply,
        modern_version: str | None = None,
    ) -> None:
        self.listings_served += 1
        caller = Caller(None, connection, modern_version or connection.protocol_version)
        try:
            listing = await self._server.listing(caller, method)
        except MCPError as error:
            await _replied(reply, to_json(error_message(request_id, error.error)))
            return
        except Exception:  # never into the lane's task group: that would end the pipe
            logger.exception("the stdio lane failed to answer a %s", method)
            await _replied(reply, to_json(error_message(request_id, _INTERNAL_ERROR)))
            return
        await _replied(reply, listing.answer(request_id))


class _LineAnswer:
    """A call's answer on the pipe: what comes before it, then it, each a line; nothing once withdrawn."""

    __slots__ = ("_reply", "is_done")

    def __init__(self, reply: Reply) -> None:
        self._reply = reply
        self.is_done = False

    def withdraw(self) -> None:
        self.is_done = True

    async def event(self, message: dict[str, Any]) -> bool:
        if self.is_done:
            return False
        return await _replied(self._reply, to_json(message))

    async def finish(self, message: dict[str, Any] | bytes, *, as_stream: bool = False, status: int = 200) -> None:
        if self.is_done:
            return
        self.is_done = True
        await _replied(self._reply, message if isinstance(message, bytes) else to_json(message))


def _has_envelope(params: object) -> bool:
    """Whether a request's params carry the 2026-07-28 envelope's version key (the SDK's sign of that era)."""
    if type(params) is not dict:
        return False
    meta = cast(dict[str, Any], params).get("_meta")
    return type(meta) is dict and PROTOCOL_VERSION_META_KEY in meta


async def _replied(reply: Reply, body: bytes) -> bool:
    """Write a line; False when the pipe is closed (the client is gone: there is nobody left to tell)."""
    try:
        await reply(body)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        return False
    return True
