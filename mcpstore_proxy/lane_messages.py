"""The message lane: a `tools/call` or listing from a client whose transport carries one message at a time and
answers on one stream shared by the whole session (the client of `mcpstore-proxy stdio`, Claude Desktop for one;
and a client of the legacy HTTP+SSE transport, see `legacy_sse`), served without the SDK's server stack, as the
fast lane (see `lane`) serves one over Streamable HTTP.

Through the SDK, each message is validated into pydantic models on its way in and the result validated and dumped
again on its way out, in a task per request: over stdio about 1.5 ms of proxy CPU for a small call, 20 ms for a
1 MB result and 5 ms for a listing of 1,000 tools; over legacy SSE 2.1 ms for a small call. The lane parses the
message once, routes the call through the very same code as the SDK's handler (`ProxyServer.call_tool` and
`routed`, in flight for the drain, see `lane_calls`), and writes the upstream's result, or the catalog's listing
already on the wire (see `listings`), as one message.

What takes the lane, with tracing off: from a handshake-era client, once its connection was adopted
(`notifications/initialized`, or its first request), one JSON-RPC `tools/call` (well formed, see
`lane_wire.tool_call`) or listing, and the client's answers to the questions asked during such a call (ids
`mcpstore-N`, see `lane_questions`); from a 2026-07-28 client (over stdio), a call or listing on `lane_modern`'s
conditions but for the HTTP headers (a pipe has none), answered in that era's shape; and
`notifications/cancelled` for a call in the lane, which is then never answered (as the SDK's dispatcher never
answers a request its peer cancelled). The client's first request decides the session's era, as the SDK's loop
decides it, and is the SDK's. Everything else goes to the SDK as it came, and every message, the lane's and the
SDK's, goes out through the transport's one writer (see `stdio`, `legacy_sse`).
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
from starlette.types import Scope

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
from mcpstore_proxy.operations import OperationObserver, operation_in_progress
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.rounds import Unaskable
from mcpstore_proxy.server import ProxyServer

__all__ = ["MessageLane", "Reply"]

Reply = Callable[[bytes], Awaitable[None]]
"""Write one message, already in JSON, to the client (the transport frames it: a line, an event); raises
`anyio.ClosedResourceError` or `anyio.BrokenResourceError` once the client is gone."""
_HANDSHAKE_VERSIONS: Final = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)
_INTERNAL_ERROR: Final = types.ErrorData(code=types.INTERNAL_ERROR, message="internal error in mcpstore-proxy")

logger = logging.getLogger(__name__)


class MessageLane:
    """Takes the messages of one client session that it serves itself (`take`), while `running`: `session` names
    it (the lane's calls and questions are keyed by it), and `connection` gives its handshake-era connection once
    adopted (None before, and after). Without `takes_modern`, a 2026-07-28 session is left to the SDK whole;
    `observer` hears of each call, with its principal's name when `names_principals`."""

    def __init__(
        self,
        server: ProxyServer,
        session: str,
        connection: Callable[[], Connection | None],
        *,
        takes_modern: bool = True,
        observer: OperationObserver | None = None,
        names_principals: bool = False,
    ) -> None:
        self._server = server
        self._session = session
        self._connection = connection
        self._observer = observer
        self._names_principals = names_principals
        self._calls = LaneCalls(server)
        self._questions = LaneQuestions()
        self._modern = ModernCalls(server) if takes_modern else None
        self._is_modern: bool | None = None
        """The session's era, once its first request said it (see `take`)."""
        self._answers: dict[RequestId, _MessageAnswer] = {}
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

    @classmethod
    def for_pipe(cls, server: ProxyServer) -> MessageLane:
        """The lane of the one client of `mcpstore-proxy stdio`."""
        return cls(server, "stdio", lambda: server.downstream.pipe)

    def take(self, line: bytes, reply: Reply, scope: Scope | None = None) -> bool:
        """Serve the message `line` (answering with `reply`) if it is the lane's; False leaves it to the SDK.
        `scope` is the HTTP request that carried it (None over stdio): whose principal, agent and headers it has.
        Never raises: it runs in the transport's reading task (over stdio), whose end would end the session."""
        try:
            return self._take(line, reply, scope)
        except Exception:
            logger.exception("the message lane failed to judge a message; the SDK answers it")
            return False

    def _take(self, line: bytes, reply: Reply, scope: Scope | None) -> bool:
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
                # The client's first request decides the session's era, as the SDK's loop decides it; it is the SDK's.
                self._is_modern = method != "initialize" and _has_envelope(message.get("params"))
            return False
        if method is None:
            return self._questions.deliver(self._session, message)
        if method == "notifications/cancelled" and "id" not in message:
            return self._withdraw(message)
        if self._is_modern:
            return self._modern is not None and self._take_modern(self._modern, tasks, message, reply)
        connection = self._connection()
        if connection is None or connection.protocol_version not in _HANDSHAKE_VERSIONS:
            return False  # not adopted yet (or any more)
        caller = Caller(scope, connection, connection.protocol_version)
        if method == "tools/call":
            call = tool_call(message)
            if call is None:
                return False
            answer = self._answers[call.id] = _MessageAnswer(reply)
            tasks.start_soon(self._serve, caller, call, answer, None)
            return True
        request_id = message.get("id")
        params = message.get("params")
        if method in LISTINGS and is_id(request_id) and (params is None or type(params) is dict):
            tasks.start_soon(self._list, caller, method, request_id, reply)
            return True
        return False

    def _take_modern(
        self, modern: ModernCalls, tasks: anyio.abc.TaskGroup, message: dict[str, Any], reply: Reply
    ) -> bool:
        """A 2026-07-28 call or listing, on the conditions `lane_modern` gives (but for the HTTP headers: a pipe has
        none)."""
        if modern.is_open and (call := modern.call(message, None)) is not None:
            answer = self._answers[call.call.id] = _MessageAnswer(reply)
            caller = Caller(None, call.connection, call.version)
            tasks.start_soon(self._serve, caller, call.call, answer, call.version)
            return True
        if (listing := modern.listing(message, None)) is not None:
            caller = Caller(None, listing.connection, listing.version)
            tasks.start_soon(self._list, caller, listing.method, listing.id, reply)
            return True
        return False

    def _withdraw(self, message: dict[str, Any]) -> bool:
        """The client cancelled a call in the lane: cancel it upstream, and never answer it."""
        request_id = cancelled_id(message)
        answer = self._answers.get(request_id) if request_id is not None else None
        if request_id is None or answer is None:
            return False  # not the lane's: the SDK's, or none
        answer.withdraw()
        self._calls.cancel(self._session, request_id)  # not yet started: it finds itself withdrawn instead
        return True

    async def _serve(
        self, caller: Caller, request: ToolCall, answer: _MessageAnswer, modern_version: str | None
    ) -> None:
        try:
            if answer.is_done:
                return  # withdrawn before it started
            await self._call(caller, request, answer, modern_version)
        except Exception:  # never into the lane's task group: that would end the session
            logger.exception("the message lane failed to serve a tools/call")
            await answer.finish(error_message(request.id, _INTERNAL_ERROR))
        finally:
            if self._answers.get(request.id) is answer:
                del self._answers[request.id]

    async def _call(
        self, caller: Caller, request: ToolCall, answer: _MessageAnswer, modern_version: str | None
    ) -> None:
        """Forward a call; a 2026-07-28 one (`modern_version`) asks its client nothing, hears no log entries (none
        opted in to), and is answered in its era's shape, as the SDK answers it."""
        self.calls_served += 1
        connection = caller.connection
        if modern_version is None:
            call = ClientCall(
                stream=self._questions.stream(answer, connection, self._session),
                connection=self._server.downstream.connection_channel(caller),
                progress=progress_reporter(answer, request.progress_token),
            )
        else:
            call = ClientCall(
                stream=Unaskable(AnswerStream(answer, connection, log_entries=False)),
                connection=None,  # its key's listen streams, once `call_tool` resolved the key
                progress=progress_reporter(answer, request.progress_token),
            )
        principal = self._server.downstream.principal(caller).name if self._names_principals else ""
        with operation_in_progress("tools/call", principal, self._observer) as operation:
            result = await self._calls.forwarded(answer, caller, call, request, operation, (self._session, request.id))
            if result is None:
                return
            if modern_version is not None and self._modern is not None:
                try:
                    result = self._modern.result(result, modern_version)
                except MCPError as error:
                    operation.outcome = "error"
                    await answer.finish(error_message(request.id, error.error))
                    return
            await answer.finish({"jsonrpc": "2.0", "id": request.id, "result": result})

    async def _list(self, caller: Caller, method: str, request_id: RequestId, reply: Reply) -> None:
        self.listings_served += 1
        try:
            answer = (await self._server.listing(caller, method)).answer(request_id)
        except MCPError as error:
            answer = to_json(error_message(request_id, error.error))
        except Exception:  # never into the lane's task group: that would end the session
            logger.exception("the message lane failed to answer a %s", method)
            answer = to_json(error_message(request_id, _INTERNAL_ERROR))
        await _replied(reply, answer)


class _MessageAnswer:
    """A call's answer on the session's one stream: what comes before it, then it, each a message; nothing once
    withdrawn."""

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
    """Write a message; False when it could not be (the client is gone: there is nobody left to tell). Never
    raises: it runs in the lane's tasks, whose failure would end the session."""
    try:
        await reply(body)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        return False
    except Exception:
        logger.exception("the message lane failed to write an answer to its client")
        return False
    return True
