"""What the fast lane (see `lane`) reads and writes: the calls it takes, the bodies it reads, and its answers, a
JSON body unless something precedes the answer, which then opens an event stream."""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from typing import Any, Final, NamedTuple, Protocol, TypeGuard, TypeVar, cast

import anyio
from mcp import MCPError, types
from mcp.server.connection import Connection
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp.shared.dispatcher import ProgressFnT
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from mcpstore_proxy.compat_uvicorn import respond_at_once
from mcpstore_proxy.json_bytes import to_json
from mcpstore_proxy.request_headers import CHECKED_HEADERS, LAST_EVENT_ID, PROTOCOL_VERSION, SESSION_ID, request_headers

__all__ = [
    "CHECKED_HEADERS",
    "LAST_EVENT_ID",
    "PROTOCOL_VERSION",
    "SESSION_ID",
    "SSE_HEADERS",
    "Acceptance",
    "Answer",
    "AnswerStream",
    "CallAnswer",
    "RequestId",
    "ToolCall",
    "Unread",
    "accepted",
    "cancelled_id",
    "error_message",
    "is_id",
    "progress_reporter",
    "read_body",
    "replaying",
    "sse_event",
    "to_json",
    "too_large",
    "tool_call",
    "without_resumption",
]

RequestId = int | str
_ResultT = TypeVar("_ResultT", bound=BaseModel)

_GZIPPED: Final = ((b"content-encoding", b"gzip"), (b"vary", b"accept-encoding"))
SSE_HEADERS: Final = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
)


class ToolCall(NamedTuple):
    """A well-formed `tools/call` (a named tuple: made for every call, at half a frozen dataclass's cost)."""

    id: RequestId
    name: str
    arguments: dict[str, Any] | None
    progress_token: RequestId | None


def tool_call(message: dict[str, Any]) -> ToolCall | None:
    """The call a `tools/call` message asks for, when it is well formed; else None (the SDK says what is wrong).

    `message` is parsed JSON, whose objects are plain dicts with string keys: hence `type(...) is dict`, and
    annotations rather than `cast()`, which costs a call and a generic alias each time (this runs for every call).
    """
    request_id = message.get("id")
    params = message.get("params")
    if not is_id(request_id) or type(params) is not dict:
        return None
    fields: dict[str, Any] = params  # pyright: ignore[reportUnknownVariableType]
    name = fields.get("name")
    arguments = fields.get("arguments")
    meta = fields.get("_meta")
    if type(name) is not str or not (arguments is None or type(arguments) is dict):
        return None
    token: object = None
    if meta is not None:
        if type(meta) is not dict:
            return None
        envelope: dict[str, Any] = meta  # pyright: ignore[reportUnknownVariableType]
        token = envelope.get("progressToken")
        if token is not None and not is_id(token):
            return None
    return ToolCall(request_id, name, arguments, token)  # pyright: ignore[reportUnknownArgumentType]


def is_id(value: object) -> TypeGuard[RequestId]:
    """Whether `value`, as parsed from JSON, is a JSON-RPC id: a string or an integer (never a boolean)."""
    kind = type(value)
    return kind is str or kind is int


def cancelled_id(message: dict[str, Any]) -> RequestId | None:
    """The id a `notifications/cancelled` names, when it is a JSON-RPC id; else None."""
    params = message.get("params")
    if type(params) is not dict:
        return None
    request_id = cast(dict[str, Any], params).get("requestId")
    return request_id if is_id(request_id) else None


class Acceptance:
    """Whether the SDK would take a POST (media types, Host, Origin) or a GET (its `Accept`, Host, Origin) as it
    is; else it answers it itself. With `legacy_sse`, the legacy HTTP+SSE transport's checks of a POST to
    `/messages/` (its `Content-Type`, Host, Origin).

    The verdict depends on the method and four header values alone, and a client sends the same ones with every
    request: it is worked out by the SDK's own checks once per distinct set, and remembered (a bounded number).
    """

    _REMEMBERED: Final = 256

    def __init__(self, security: TransportSecurityMiddleware, *, legacy_sse: bool = False) -> None:
        self._security = security
        self._judge = _is_acceptable_legacy_post if legacy_sse else _is_acceptable
        self._verdicts: dict[tuple[object, ...], bool] = {}
        self._last: tuple[tuple[object, ...], bool] | None = None
        """The last verdict looked up and its headers: compared without hashing them (new objects each request),
        and most requests repeat the last one's."""

    def remembered_for(self, method: str, checked: list[tuple[bytes, bytes]]) -> bool | None:
        """The verdict on a request of `method` with the checked headers `checked` (`RequestHeaders.checked`), when one
        on the same headers is remembered; else None."""
        key = (method, *checked)
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        verdict = self._verdicts.get(key)
        if verdict is not None:
            self._last = (key, verdict)
        return verdict

    async def verdict(self, scope: Scope, checked: list[tuple[bytes, bytes]] | None = None) -> bool:
        """The verdict on the request of `scope` (whose checked headers are `checked`, when the caller has found
        them): remembered, or worked out by the SDK's checks (and remembered)."""
        if checked is None:
            checked = request_headers(scope).checked
        remembered = self.remembered_for(scope["method"], checked)
        if remembered is not None:
            return remembered
        verdict = await self._judge(scope, self._security)
        if len(self._verdicts) >= self._REMEMBERED:
            self._verdicts.clear()
        self._verdicts[(scope["method"], *checked)] = verdict
        return verdict


async def _is_acceptable(scope: Scope, security: TransportSecurityMiddleware) -> bool:
    request = Request(scope)
    accepts_json, accepts_events = check_accept_headers(request)
    if scope["method"] == "GET":
        return accepts_events and await security.validate_request(request, is_post=False) is None
    content_type = request.headers.get("content-type", "").split(";")[0]
    if not (accepts_json and accepts_events) or "application/json" not in (t.strip() for t in content_type.split(",")):
        return False
    return await security.validate_request(request, is_post=True) is None


async def _is_acceptable_legacy_post(scope: Scope, security: TransportSecurityMiddleware) -> bool:
    return await security.validate_request(Request(scope), is_post=True) is None


class Unread(enum.Enum):
    TOO_LARGE = "past the size limit (read no further)"
    GONE = "the client left before it finished sending"


async def read_body(receive: Receive, limit: int) -> bytes | Unread:
    """The whole body, unless it is past `limit` bytes or the client leaves first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return Unread.GONE
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return Unread.TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


too_large: Final = Response("Request body too large", status_code=413)
"""The SDK's own answer to a body past its limit (`RequestBodyLimitMiddleware`)."""


def without_resumption(scope: Scope) -> Scope:
    """`scope` without its `Last-Event-ID`: for a session manager that keeps no events, which cannot replay any.

    The SDK's transport then answers a resumption with nothing at all (uvicorn's 500); the spec lets a server
    ignore the header, and the client gets a fresh standing stream instead."""
    if request_headers(scope).last_event_id is None:  # the request's one pass, which the layers before made
        return scope
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    return {**scope, "headers": [(name, value) for name, value in headers if name != LAST_EVENT_ID]}


def replaying(body: bytes, receive: Receive) -> Receive:
    """`receive`, giving the body already read first."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def accepted(session_id: str) -> Response:
    return Response(status_code=202, media_type="application/json", headers={MCP_SESSION_ID_HEADER: session_id})


def error_message(request_id: RequestId, error: types.ErrorData) -> dict[str, Any]:
    wire = error.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {"jsonrpc": "2.0", "id": request_id, "error": wire}


class CallAnswer(Protocol):
    """Where a call in a lane is answered: its HTTP response (`Answer`), or the stdio pipe."""

    async def event(self, message: dict[str, Any]) -> bool:
        """Send a message before the answer; False once the answer went."""
        ...

    def finish(self, message: dict[str, Any] | bytes, *, as_stream: bool = False, status: int = 200) -> Awaitable[None]:
        """Send the answer (`message`, or the message already in JSON), with HTTP `status` where there is one;
        `as_stream`: on an event stream where there is a choice."""
        ...


class Answer:
    """One call's HTTP response: a JSON body, unless something is sent before the answer, which opens an event
    stream for it and everything after."""

    __slots__ = ("_is_done", "_is_streaming", "_lock", "_send", "_session_header", "_stream_headers")

    def __init__(
        self, send: Send, session_id: str | None, *, stream_headers: tuple[tuple[bytes, bytes], ...] = SSE_HEADERS
    ) -> None:
        self._send = send
        self._session_header = () if session_id is None else ((SESSION_ID, session_id.encode("latin-1")),)
        self._stream_headers = stream_headers
        self._is_streaming = False
        self._is_done = False
        self._lock: anyio.Lock | None = None
        """Made by the first event: until then, nothing else can be sending (most calls send only the answer)."""

    async def event(self, message: dict[str, Any]) -> bool:
        """Send a message before the answer; False once the answer went."""
        return await self._before_the_answer(sse_event(to_json(message)))

    async def ping(self) -> bool:
        """Keep the connection of an answer still to come alive with a comment line, on the event stream this
        opens; False once the answer went."""
        return await self._before_the_answer(b": ping\r\n\r\n")

    async def _before_the_answer(self, chunk: bytes) -> bool:
        if self._lock is None:
            self._lock = anyio.Lock(fast_acquire=True)  # no trip round the event loop when nobody holds it
        async with self._lock:
            if self._is_done:
                return False
            await self._open_stream()
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            return True

    def finish(self, message: dict[str, Any] | bytes, *, as_stream: bool = False, status: int = 200) -> Awaitable[None]:
        """Send the answer (`message`, or the message already in JSON): on the stream if one is open (or
        `as_stream`), else as the JSON body, with HTTP `status`."""
        body = message if isinstance(message, bytes) else to_json(message)
        if self._lock is None:  # nothing else can be sending (see `_lock`)
            return self._finish(body, as_stream=as_stream, status=status)
        return self._finish_locked(self._lock, body, as_stream=as_stream, status=status)

    async def finish_gzipped(self, body: bytes) -> None:
        """Send the answer as a JSON body already gzip-compressed (see `compressed`), before anything else was sent
        (an event stream cannot carry it)."""
        assert self._lock is None, "a gzip body is the whole answer: nothing may precede it"
        assert not self._is_done, "the answer went already"
        self._is_done = True
        headers = _json_headers(body, self._session_header, _GZIPPED)
        await respond_at_once(
            self._send,
            {"type": "http.response.start", "status": 200, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False},
        )

    async def _finish_locked(self, lock: anyio.Lock, body: bytes, *, as_stream: bool, status: int) -> None:
        async with lock:
            await self._finish(body, as_stream=as_stream, status=status)

    async def _finish(self, body: bytes, *, as_stream: bool, status: int) -> None:
        if self._is_done:
            return
        self._is_done = True  # before any await: an event sent from now on finds the answer gone
        if as_stream or self._is_streaming:
            await self._open_stream()
            await self._send({"type": "http.response.body", "body": sse_event(body), "more_body": False})
            return
        headers = _json_headers(body, self._session_header)
        await respond_at_once(
            self._send,
            {"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False},
        )

    async def _open_stream(self) -> None:
        if not self._is_streaming:
            self._is_streaming = True
            headers = [*self._stream_headers, *self._session_header]
            await self._send({"type": "http.response.start", "status": 200, "headers": headers})


def _json_headers(
    body: bytes, session_header: tuple[tuple[bytes, bytes], ...], extra: tuple[tuple[bytes, bytes], ...] = ()
) -> list[tuple[bytes, bytes]]:
    """The headers of an answer that is a JSON body."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
        *session_header,
    ]


class AnswerStream:
    """The client behind a call in the lane, reached on the call's own answer (a `ClientChannel`): it hears what
    the upstream says during the call (log entries only where `log_entries`: a 2026-07-28 client that opted in to
    none gets none), and is asked nothing (`lane` asks a handshake-era client on the answer, by its own class)."""

    __slots__ = ("_answer", "_connection", "_log_entries")

    def __init__(self, answer: CallAnswer, connection: Connection, *, log_entries: bool = True) -> None:
        self._answer = answer
        self._connection = connection
        self._log_entries = log_entries

    @property
    def capabilities(self) -> types.ClientCapabilities | None:
        return self._connection.client_capabilities

    @property
    def accepts_requests(self) -> bool:
        return False

    async def notify(self, notification: types.ServerNotification) -> None:
        if not self._log_entries and isinstance(notification, types.LoggingMessageNotification):
            return
        wire = notification.model_dump(by_alias=True, mode="json", exclude_none=True)
        await self._answer.event({"jsonrpc": "2.0", **wire})

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        raise MCPError(types.INTERNAL_ERROR, f"{request.method} cannot be put to this client on a call's answer")


def sse_event(body: bytes, event_id: str | None = None) -> bytes:
    """A message in JSON as one server-sent event (with its id, where the session keeps events)."""
    framed = b"event: message\r\ndata: " + body + b"\r\n\r\n"
    return f"id: {event_id}\r\n".encode() + framed if event_id else framed


def progress_reporter(answer: CallAnswer, token: RequestId | None) -> ProgressFnT | None:
    if token is None:
        return None

    async def report(progress: float, total: float | None, message: str | None) -> None:
        params: dict[str, Any] = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await answer.event({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})

    return report
