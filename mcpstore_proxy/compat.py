"""Every place the proxy leans on a private part of a dependency, and nowhere else.

Each function here wraps one assumption about `mcp` (pinned to the minor
release in pyproject.toml), and `tests/test_compat.py` and
`tests/test_compat_lean.py` hold one test per assumption, so an upgrade that
breaks one fails there, by name, instead of somewhere deep in a proxied call.
uvicorn's are in `compat_uvicorn`.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Generator
from contextlib import AsyncExitStack, contextmanager
from functools import lru_cache
from typing import Any, Final, Protocol, Self, TextIO
from urllib.parse import parse_qs
from uuid import UUID

import mcp.client.sse
import mcp.client.stdio
import mcp.client.streamable_http
import mcp.server.connection
import mcp.server.sse
import mcp.server.streamable_http
import mcp.shared._otel
import mcp.shared.jsonrpc_dispatcher
import sse_starlette
from anyio.abc import ByteSendStream, Process
from mcp.client._transport import ReadStream, TransportStreams, WriteStream
from mcp.client.stdio import StdioServerParameters, get_default_environment
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, AuthorizationContext, authorization_context
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    EventMessage,
    StreamableHTTPServerTransport,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared._context_streams import ContextReceiveStream, create_context_streams
from mcp.shared.message import SessionMessage
from opentelemetry import context as otel_context
from opentelemetry import trace
from starlette.types import Scope

from mcpstore_proxy.lean_channels import LeanReceiveStream
from mcpstore_proxy.raw_pipes import PipeWriting
from mcpstore_proxy.upstream_process import PipeWriter, start_process

__all__ = [
    "EventSink",
    "ListExitStack",
    "MessageStream",
    "ReadStream",
    "TransportStreams",
    "WriteStream",
    "carry_session_messages_on",
    "downstream_connection",
    "frame_answers_by_first_event",
    "http_session",
    "keep_connection_callbacks_in_lists",
    "legacy_session",
    "legacy_session_named",
    "newest_legacy_session",
    "open_http_sessions",
    "set_session_limit",
    "spans_only_when_traced",
    "spawn_stdio_server",
    "standing_stream",
    "stdin_writer",
    "stop_stdio_server",
    "take_last_context",
    "terminate_http_sessions",
]


def downstream_connection(ctx: ServerRequestContext[Any, Any]) -> Connection:
    """The per-connection object behind a request (`ServerSession._connection`): its `session_id`, `state`,
    standalone channel and `exit_stack`, which the SDK unwinds when the connection ends."""
    connection = getattr(ctx.session, "_connection", None)
    if not isinstance(connection, Connection):
        raise RuntimeError("this mcp SDK no longer exposes ServerSession._connection; pin mcp to a supported release")
    return connection


def frame_answers_by_first_event(response_class: type[Any]) -> None:
    """Have the SDK's Streamable HTTP transport build its responses with `response_class` (same constructor as
    sse_starlette's `EventSourceResponse`) by rebinding the name its module looks up at each request."""
    module = mcp.server.streamable_http
    current = getattr(module, "EventSourceResponse", None)
    if current is not sse_starlette.EventSourceResponse and current is not response_class:
        raise RuntimeError("this mcp SDK no longer builds its SSE responses with sse_starlette.EventSourceResponse")
    setattr(module, "EventSourceResponse", response_class)  # noqa: B010  # private; pinned by a test


def open_http_sessions(manager: StreamableHTTPSessionManager) -> int:
    """How many Streamable HTTP sessions the manager holds open (`_server_instances`)."""
    instances: dict[str, Any] = getattr(manager, "_server_instances")  # noqa: B009  # private; pinned by a test
    return len(instances)


def http_session(
    manager: StreamableHTTPSessionManager, session_id: str, scope: Scope
) -> StreamableHTTPServerTransport | None:
    """The live transport of the Streamable HTTP session `session_id` when the request of `scope` may use it: the
    manager's own test (`_server_instances`, `_session_owners`: the principal that opened it); else None, and the
    manager answers the request itself (404)."""
    instances: dict[str, StreamableHTTPServerTransport] = getattr(manager, "_server_instances")  # noqa: B009
    transport = instances.get(session_id)
    if transport is None or transport.is_terminated:
        return None
    owners: dict[str, Any] = getattr(manager, "_session_owners")  # noqa: B009  # private; pinned by a test
    user = scope.get("user")
    requestor = _requestor(user) if isinstance(user, AuthenticatedUser) else None
    return transport if owners.get(session_id) == requestor else None


def newest_legacy_session(transport: SseServerTransport) -> str:
    """The id (hex) of the legacy SSE session `transport.connect_sse` opened last (`_read_stream_writers`): in its
    block, the block's own, as it opens the session and enters the block with no await between."""
    writers: dict[UUID, Any] = getattr(transport, "_read_stream_writers")  # noqa: B009  # private; pinned by a test
    return next(reversed(writers)).hex


def legacy_session_named(scope: Scope) -> str | None:
    """The legacy SSE session id (hex) a request's `?session_id=` names, read as the transport reads it; None when
    it names none, or no valid one."""
    session = _named_session(scope)
    return session.hex if session is not None else None


def legacy_session(transport: SseServerTransport, scope: Scope) -> str | None:
    """The id (hex) of the live legacy SSE session a POST to `/messages/` names (`?session_id=`), when the request
    may use it: the transport's own tests (`_read_stream_writers`, `_session_owners`: the principal that opened
    it); else None, and the transport answers the request itself (400, 404)."""
    session = _named_session(scope)
    writers: dict[UUID, Any] = getattr(transport, "_read_stream_writers")  # noqa: B009  # private; pinned by a test
    if session is None or session not in writers:
        return None
    owners: dict[UUID, Any] = getattr(transport, "_session_owners")  # noqa: B009  # private; pinned by a test
    user = scope.get("user")
    requestor = _requestor(user) if isinstance(user, AuthenticatedUser) else None
    return session.hex if owners.get(session) == requestor else None


def _named_session(scope: Scope) -> UUID | None:
    named = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get("session_id")
    if not named:
        return None
    try:
        return UUID(hex=named[-1])  # the last, as Starlette's `query_params.get` reads it
    except ValueError:
        return None


@lru_cache(maxsize=1024)
def _requestor(user: AuthenticatedUser) -> AuthorizationContext:
    """Who `user` is to the session manager (the owner it records); worked out once per user object, of which the
    gate makes one per principal (users compare by identity)."""
    return authorization_context(user)


class EventSink(Protocol):
    """What the SDK's transport sends a session's messages outside any request to, and closes (as it does the two
    ends of a memory stream)."""

    async def send(self, event: EventMessage) -> None: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


@contextmanager
def standing_stream(transport: StreamableHTTPServerTransport, sink: EventSink) -> Generator[bool]:
    """Have the session's messages outside any request sent to `sink` while the block runs, where the SDK's own GET
    handler puts its memory stream (`_request_streams[GET_STREAM_KEY]`, both ends: its router sends to the first,
    the session's end closes both); False, with nothing put there, when the session has such a stream already (the
    SDK refuses a second one with 409). Leaving takes it out, unless the session already replaced or dropped it,
    and closes it."""
    streams: dict[Any, tuple[Any, Any]] = getattr(transport, "_request_streams")  # noqa: B009  # pinned by a test
    if GET_STREAM_KEY in streams:
        yield False
        return
    streams[GET_STREAM_KEY] = sink, sink
    try:
        yield True
    finally:
        registered = streams.get(GET_STREAM_KEY)
        if registered is not None and registered[0] is sink:
            del streams[GET_STREAM_KEY]
        sink.close()


_SDK_SPAN: Final = mcp.shared._otel.otel_span  # pyright: ignore[reportPrivateUsage]
_SDK_INJECT: Final = mcp.shared._otel.inject_trace_context  # pyright: ignore[reportPrivateUsage]


@contextmanager
def _span_if_traced(name: str, **options: Any) -> Generator[trace.Span]:
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        yield trace.INVALID_SPAN  # nothing would record it: the no-op span's own cost is the SDK's
        return
    with _SDK_SPAN(name, **options) as span:
        yield span


def _inject_if_traced(meta: dict[str, Any]) -> None:
    if trace.get_current_span().get_span_context().is_valid:  # else there is no trace context to pass on
        _SDK_INJECT(meta)


def is_tracing() -> bool:
    """Whether a tracer provider is set (`tracing: true`), so that the SDK's client spans would be recorded."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def in_a_trace() -> bool:
    """Whether a trace is in effect (a span context to pass on), whether or not anything records it."""
    current = otel_context.get_current()
    # An empty context holds no span: the usual case, answered without the span lookup's four calls.
    return bool(current) and trace.get_current_span(current).get_span_context().is_valid


def with_trace_context(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """`params` carrying the current trace context in `_meta`, as the SDK's client passes it on (a copy; `params`
    itself when there is none to pass on)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return params
    meta: dict[str, Any] = dict(params.get("_meta") or {}) if params else {}
    _SDK_INJECT(meta)
    return {**(params or {}), "_meta": meta}


def spans_only_when_traced() -> None:
    """The SDK's JSON-RPC dispatcher opens an OpenTelemetry span and injects a trace context for every request it
    sends (`otel_span`, `inject_trace_context`), recording or not: about 4% of the proxy's CPU per forwarded call
    while no tracer provider is set. Rebind both names in the dispatcher's module to versions that do nothing
    until one is (as `tracing: true` sets one)."""
    module = mcp.shared.jsonrpc_dispatcher
    if getattr(module, "otel_span", None) not in (_SDK_SPAN, _span_if_traced):
        raise RuntimeError("this mcp SDK no longer opens its client spans with mcp.shared._otel.otel_span")
    setattr(module, "otel_span", _span_if_traced)  # noqa: B010  # private; pinned by a test
    setattr(module, "inject_trace_context", _inject_if_traced)  # noqa: B010


MessageStream = ReadStream[SessionMessage | Exception]


_SESSION_CHANNEL_MAKERS: Final = (
    mcp.server.streamable_http,
    mcp.server.sse,
    mcp.client.streamable_http,
    mcp.client.sse,
)
"""The SDK's modules that make a session's message channels with `create_context_streams`: both server transports
(each downstream session's) and both HTTP client transports (each HTTP upstream session's)."""


def carry_session_messages_on(streams: type[Any]) -> None:
    """Have the SDK's transports make each session's message channels with `streams` (called as
    `create_context_streams[T](max_buffer_size)` is), by rebinding the name each of their modules looks up when a
    session opens."""
    for module in _SESSION_CHANNEL_MAKERS:
        current = getattr(module, "create_context_streams", None)
        if current is not create_context_streams and current is not streams:
            raise RuntimeError(f"{module.__name__} no longer makes its sessions' streams with create_context_streams")
    for module in _SESSION_CHANNEL_MAKERS:
        setattr(module, "create_context_streams", streams)  # noqa: B010  # private; pinned by a test


class ListExitStack(AsyncExitStack):
    """An `AsyncExitStack` with its callbacks in a list, not the stdlib's `deque` (0.6 KiB, empty, for each
    connection the SDK makes): the stack only appends to them, pops the last and tests them for truth."""

    def __init__(self) -> None:
        super().__init__()
        self._exit_callbacks: Any = []

    def pop_all(self) -> Self:
        moved = super().pop_all()
        self._exit_callbacks = []
        return moved


def keep_connection_callbacks_in_lists() -> None:
    """Have each of the SDK's downstream connections (`Connection.exit_stack`) made as a `ListExitStack`, by
    rebinding the name its module looks up in `Connection.__init__`."""
    module = mcp.server.connection
    current = getattr(module, "AsyncExitStack", None)
    if current is not AsyncExitStack and current is not ListExitStack:
        raise RuntimeError("this mcp SDK no longer makes a connection's exit stack with contextlib.AsyncExitStack")
    setattr(module, "AsyncExitStack", ListExitStack)  # noqa: B010  # private; pinned by a test


def take_last_context(stream: object) -> contextvars.Context | None:
    """The context `stream`'s last message was sent in (`last_context`, which the SDK's dispatcher runs its handler
    in): taken out of the SDK's own context streams, so that they no longer hold it; read from any other stream that
    has one (None if it has none)."""
    if not isinstance(stream, ContextReceiveStream | LeanReceiveStream):
        return getattr(stream, "last_context", None)
    context: contextvars.Context | None = stream.last_context
    stream.last_context = None
    return context


def set_session_limit(manager: StreamableHTTPSessionManager, max_sessions: int) -> None:
    """Change the manager's session limit after construction; it reads `max_sessions` at each admission, under its
    lock, and answers HTTP 503 past it."""
    manager.max_sessions = max_sessions


async def terminate_http_sessions(manager: StreamableHTTPSessionManager) -> None:
    """End every open Streamable HTTP session as a DELETE would: its streams close (so its GET stream's response
    completes), its server task ends, and its connection's exit stack unwinds."""
    instances: dict[str, Any] = getattr(manager, "_server_instances")  # noqa: B009  # private; pinned by a test
    for transport in list(instances.values()):
        await transport.terminate()


async def spawn_stdio_server(parameters: StdioServerParameters, errlog: TextIO) -> Process:
    """Start a stdio server as `stdio_client` does (`_create_platform_compatible_process`): its own process group,
    the SDK's inherited environment under `parameters.env`, stderr to `errlog`, and pipes for stdin and stdout;
    on POSIX without stopping the event loop for a `fork()` (see `upstream_process`)."""
    stdio = mcp.client.stdio
    command = await stdio._get_executable_command(parameters.command)  # pyright: ignore[reportPrivateUsage]
    env = get_default_environment() | (parameters.env or {})
    if sys.platform != "win32":
        return await start_process([command, *parameters.args], env=env, cwd=parameters.cwd, stderr=errlog)
    process = await stdio._create_platform_compatible_process(  # pyright: ignore[reportPrivateUsage]
        command=command, args=parameters.args, env=env, errlog=errlog, cwd=parameters.cwd
    )
    if not isinstance(process, Process):
        raise RuntimeError("this mcp SDK no longer spawns stdio servers as anyio processes")
    return process


async def stop_stdio_server(process: Process) -> None:
    """Stop a stdio server as `stdio_client` does on exit (`_stop_server_process`): close its stdin, give it time
    to exit, then terminate and kill its process group; its stdout is closed last. Bounded."""
    await mcp.client.stdio._stop_server_process(process)  # pyright: ignore[reportPrivateUsage]


def stdin_writer(stdin: ByteSendStream) -> PipeWriting | None:
    """The writer under a process's stdin (`upstream_process.PipeWriter`'s pipe, or the asyncio writer under anyio's
    `StreamWriterWrapper._stream` where the SDK started it), or None elsewhere.

    anyio's `send` yields to the event loop after every write that did not fill the pipe (a cancel-shielded
    checkpoint): a trip through the loop per message to an upstream. Writing to the asyncio writer and waiting
    on its `drain()` (which waits only while the pipe is full) sends the same bytes without it."""
    if isinstance(stdin, PipeWriter):
        return stdin.writer
    writer = getattr(stdin, "_stream", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None
