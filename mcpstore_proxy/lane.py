"""The fast lane: a handshake-era `tools/call` inside an established Streamable HTTP session (and a 2026-07-28 one,
see `lane_modern`), served without the SDK's server stack.

Through the SDK, one forwarded call costs a pydantic validation of the message, a memory stream and a task per
request, the server runner's dispatch and an event stream, around a payload the proxy only routes. The lane parses
the POST once (`json_bytes.from_json`, which keeps integers of any size exact), routes it through the very same code
as the SDK's handler (`ProxyServer.call_tool` and `routed`, inside `Drain.request_in`: session keys, named sessions,
drain accounting, start-up retry, one error translation), and answers in plain JSON, or on an event stream opened
the moment the upstream says something before its answer (progress, a log entry, a request to the client), which
then carries that and the answer.

What takes the lane: a POST carrying one JSON-RPC `tools/call` request with the `Mcp-Session-Id` of a session this
principal opened (the session manager's own test) and the proxy already adopted (after its first request past
`initialize`), a handshake-era `MCP-Protocol-Version` or none, accepting JSON and event streams, with a JSON body
that passes the Host and Origin checks. The lane also takes what answers its own traffic: the client's answers to
the requests it sent (ids `mcpstore-N`, see `lane_questions`), and `notifications/cancelled` for a call it is
serving. Everything else goes to the SDK unchanged, its body replayed, and every refusal (400, 404, 406, 413,
421, 403) is the SDK's own.
A 2026-07-28 `tools/call` or listing takes the lane too, on the conditions `lane_modern` gives, and is answered in
that era's shape. A listing of either era goes gzip-compressed to a client that accepts it (see `compressed`).
With `tracing: true` nothing takes the lane: spans are opened in the SDK's request context.

A call in the lane holds its session open (no idle expiry meanwhile), counts in the metrics like any request, is
cancelled upstream when its client hangs up or cancels it, and, once cancelled, is answered with the SDK's
`-32800` on an event stream, as the SDK's transport does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, cast

from mcp import MCPError
from mcp.server.connection import Connection
from mcp.server.streamable_http import (
    StreamableHTTPServerTransport,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

from mcpstore_proxy.compat import http_session, standing_stream
from mcpstore_proxy.compressed import accepts_gzip
from mcpstore_proxy.downstream import Caller
from mcpstore_proxy.json_bytes import from_json
from mcpstore_proxy.lane_calls import LaneCalls
from mcpstore_proxy.lane_modern import (
    ERROR_STATUSES,
    STREAM_HEADERS,
    ModernCall,
    ModernCalls,
    ModernListing,
    routing_of,
)
from mcpstore_proxy.lane_questions import LaneQuestions
from mcpstore_proxy.lane_stream import PING_SECONDS, StandingStream
from mcpstore_proxy.lane_wire import (
    Acceptance,
    Answer,
    AnswerStream,
    RequestId,
    ToolCall,
    Unread,
    accepted,
    cancelled_id,
    error_message,
    is_id,
    progress_reporter,
    read_body,
    replaying,
    too_large,
    tool_call,
    without_resumption,
)
from mcpstore_proxy.listings import LISTINGS
from mcpstore_proxy.operations import OperationObserver, operation_in_progress
from mcpstore_proxy.relay import ClientCall
from mcpstore_proxy.request_headers import first_value, request_headers
from mcpstore_proxy.rounds import Unaskable
from mcpstore_proxy.server import ProxyServer
from mcpstore_proxy.taskless_sessions import hold

__all__ = ["FastLane"]

logger = logging.getLogger(__name__)

_HANDSHAKE_VERSIONS: Final = frozenset(version.encode() for version in HANDSHAKE_PROTOCOL_VERSIONS)
_METHODS: Final = frozenset(("POST", "GET"))
_NO_STATUSES: Final[Mapping[int, int]] = {}

_Session = tuple[str, Connection, StreamableHTTPServerTransport]
"""A session the lane may serve: its id, its connection, and its transport (for the idle hold)."""


class FastLane:
    """An ASGI app in front of the SDK's Streamable HTTP app (`app`), serving what may take the lane itself."""

    def __init__(
        self,
        server: ProxyServer,
        manager: StreamableHTTPSessionManager,
        security: TransportSecuritySettings,
        app: ASGIApp,
        *,
        observer: OperationObserver | None = None,
        names_principals: bool = False,
        ping_seconds: float = PING_SECONDS,
    ) -> None:
        self._server = server
        self._manager = manager
        self._acceptance = Acceptance(TransportSecurityMiddleware(security))
        self._app = app
        self._observer = observer
        self._names_principals = names_principals
        self._ping_seconds = ping_seconds
        self._calls = LaneCalls(server)
        self._questions = LaneQuestions()
        self._modern = ModernCalls(server)
        self.calls_served = 0
        """Calls the lane took (`fast_lane_calls` in `/admin/status`)."""
        self.streams_served = 0
        """Standing event streams the lane took (`fast_lane_streams` in `/admin/status`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "GET" and self._manager.event_store is None:
            scope = without_resumption(scope)
        traces = self._server.traces
        session = None
        if method in _METHODS and not traces and (found := self._session_of(scope)) is not None:
            session, checked = found
            acceptable = self._acceptance.remembered_for(method, checked)
            if acceptable is None:  # headers not judged before: the SDK's checks, once
                acceptable = await self._acceptance.verdict(scope, checked)
            if not acceptable:
                session = None
        routing = None
        if session is None:
            found = None
            if method == "POST" and self._modern.is_open and not traces:
                found = routing_of(scope, self._manager.max_request_body_size)
            if found is not None:
                routing = found.headers
                acceptable = self._acceptance.remembered_for(method, found.checked)
                if acceptable is None:  # headers not judged before: the SDK's checks, once
                    acceptable = await self._acceptance.verdict(scope, found.checked)
                if not acceptable:
                    routing = None
            if routing is None:
                await self._app(scope, receive, send)
                return
        elif method == "GET":
            if not await self._stream(receive, send, session):
                await self._app(scope, receive, send)
            return
        body = await read_body(receive, self._manager.max_request_body_size)
        if body is Unread.TOO_LARGE:
            await too_large(scope, receive, send)
            return
        if not isinstance(body, bytes):
            return  # the client left before it finished sending
        try:
            message = from_json(body)
        except ValueError:
            message = None
        if type(message) is dict and message.get("jsonrpc") == "2.0":  # pyright: ignore[reportUnknownMemberType]
            request: dict[str, Any] = message  # pyright: ignore[reportUnknownVariableType]  # no cast(): a call
            if session is not None and await self._take(scope, receive, send, session, request):
                return
            if routing is not None and (call := self._modern.call(request, routing)) is not None:
                await self._serve_modern(scope, receive, send, call)
                return
            if routing is not None and (listing := self._modern.listing(request, routing)) is not None:
                await self._list_modern(scope, send, listing)
                return
        await self._app(scope, replaying(body, receive), send)  # unparsable, a batch, or not the lane's

    async def _take(
        self, scope: Scope, receive: Receive, send: Send, session: _Session, message: dict[str, Any]
    ) -> bool:
        """Serve one JSON-RPC message if it is the lane's; False leaves it to the SDK."""
        session_id, connection, transport = session
        method = message.get("method")
        if method is None:
            return self._questions.deliver(session_id, message) and await _accept(session_id, scope, receive, send)
        if method == "notifications/cancelled" and "id" not in message:
            cancelled = cancelled_id(message)
            is_ours = cancelled is not None and self._calls.cancel(session_id, cancelled)
            return is_ours and await _accept(session_id, scope, receive, send)
        request_id = message.get("id")
        params = message.get("params")
        call = tool_call(message) if method == "tools/call" else None
        is_listing = method in LISTINGS and is_id(request_id) and (params is None or isinstance(params, dict))
        if call is None and not is_listing:
            return False
        with hold(transport) as is_open:
            if not is_open:
                return False  # its idle period ran out: the SDK answers for a session that is ending
            if call is not None:
                await self._serve(scope, receive, send, session_id, connection, call)
            else:
                await self._list(scope, send, session_id, connection, method, cast(RequestId, request_id))
            return True

    async def _stream(self, receive: Receive, send: Send, session: _Session) -> bool:
        """Serve the session's standing event stream (see `lane_stream`); False leaves it to the SDK."""
        session_id, _, transport = session
        stream = StandingStream(send)
        with hold(transport) as is_open, standing_stream(transport, stream) as is_ours:
            if not is_open or not is_ours:
                return False  # a session ending, or a second stream: the SDK answers (404, 409)
            self.streams_served += 1
            await stream.serve(session_id, receive, ping_seconds=self._ping_seconds)
            return True

    def _session_of(self, scope: Scope) -> tuple[_Session, list[tuple[bytes, bytes]]] | None:
        """The session a POST, or a GET for the standing stream, may be served in by the lane, from its headers
        alone, with the headers the transport checks judge (see `Acceptance`); else None."""
        headers = request_headers(scope)
        session_id = headers.session_id
        if session_id is None or headers.last_event_id is not None or headers.repeats:
            return None  # no session; a resumption (the SDK replays what its event store kept); doubtful
        version = headers.protocol_version
        if version is not None and version not in _HANDSHAKE_VERSIONS:
            return None  # a 2026-07-28 request (see `lane_modern`), or one the SDK refuses
        if headers.declares_more_than(self._manager.max_request_body_size):
            return None  # the SDK refuses it unread
        sid = session_id.decode("latin-1")
        connection = self._server.downstream.adopted(sid)
        if connection is None:
            return None
        transport = http_session(self._manager, sid, scope)
        if transport is None:
            return None
        return (sid, connection, transport), headers.checked

    def _taken(self, scope: Scope, send: Send, session_id: str, connection: Connection) -> tuple[Answer, Caller, str]:
        """A request the lane took: its response, its caller, and the principal its metrics name ("" if none)."""
        self.calls_served += 1
        caller = Caller(scope, connection, connection.protocol_version)
        principal = self._server.downstream.principal(caller).name if self._names_principals else ""
        return Answer(send, session_id), caller, principal

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, session_id: str, connection: Connection, request: ToolCall
    ) -> None:
        answer, caller, principal = self._taken(scope, send, session_id, connection)
        call = ClientCall(
            stream=self._questions.stream(answer, connection, session_id),
            connection=self._server.downstream.connection_channel(caller),
            progress=progress_reporter(answer, request.progress_token),
        )
        with operation_in_progress("tools/call", principal, self._observer) as operation:
            result = await self._calls.forwarded(
                answer, caller, call, request, operation, (session_id, request.id), hang_up=receive
            )
            if result is not None:
                await answer.finish({"jsonrpc": "2.0", "id": request.id, "result": result})

    async def _serve_modern(self, scope: Scope, receive: Receive, send: Send, modern: ModernCall) -> None:
        """Serve a 2026-07-28 call (see `lane_modern`): in the key its request resolves to, never asking its
        client anything, answered in the SDK's shape."""
        self.calls_served += 1
        request, connection = modern.call, modern.connection
        answer = Answer(send, None, stream_headers=STREAM_HEADERS)
        caller = Caller(scope, connection, modern.version)
        principal = self._server.downstream.principal(caller).name if self._names_principals else ""
        call = ClientCall(
            stream=Unaskable(AnswerStream(answer, connection, log_entries=False)),  # none opted in to
            connection=None,  # its key's listen streams, once `call_tool` resolved the key
            progress=progress_reporter(answer, request.progress_token),
        )
        with operation_in_progress("tools/call", principal, self._observer) as operation:
            result = await self._calls.forwarded(
                answer,
                caller,
                call,
                request,
                operation,
                None,
                ERROR_STATUSES,
                hang_up=receive,
                keepalive=answer.ping,
                keepalive_seconds=self._ping_seconds,
            )
            if result is None:
                return
            try:
                shaped = self._modern.result(result, modern.version)
            except MCPError as error:
                operation.outcome = "error"
                await answer.finish(error_message(request.id, error.error))
                return
            await answer.finish({"jsonrpc": "2.0", "id": request.id, "result": shaped})

    async def _list(
        self, scope: Scope, send: Send, session_id: str, connection: Connection, method: str, request_id: RequestId
    ) -> None:
        """Answer a listing from the catalog's wire form, with only the id spliced in (or, for a client that accepts
        gzip, appended to the listing deflated once: see `compressed`)."""
        answer, caller, principal = self._taken(scope, send, session_id, connection)
        await self._answer_listing(scope, answer, caller, principal, method, request_id)

    async def _list_modern(self, scope: Scope, send: Send, listing: ModernListing) -> None:
        """Answer a 2026-07-28 listing (see `lane_modern`) as `_list` answers one, an error with the SDK's status."""
        self.calls_served += 1
        caller = Caller(scope, listing.connection, listing.version)
        principal = self._server.downstream.principal(caller).name if self._names_principals else ""
        answer = Answer(send, None, stream_headers=STREAM_HEADERS)
        await self._answer_listing(scope, answer, caller, principal, listing.method, listing.id, ERROR_STATUSES)

    async def _answer_listing(
        self,
        scope: Scope,
        answer: Answer,
        caller: Caller,
        principal: str,
        method: str,
        request_id: RequestId,
        statuses: Mapping[int, int] = _NO_STATUSES,
    ) -> None:
        with operation_in_progress(method, principal, self._observer) as operation:
            try:
                listing = await self._server.listing(caller, method)
            except MCPError as error:
                await answer.finish(error_message(request_id, error.error), status=statuses.get(error.error.code, 200))
                return
            operation.outcome = "ok"
        if accepts_gzip(first_value(scope, b"accept-encoding")) and (body := listing.gzipped_answer(request_id)):
            await answer.finish_gzipped(body)
            return
        await answer.finish(listing.answer(request_id))


async def _accept(session_id: str, scope: Scope, receive: Receive, send: Send) -> bool:
    await accepted(session_id)(scope, receive, send)
    return True
