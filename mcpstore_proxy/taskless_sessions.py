"""Handshake-era Streamable HTTP sessions served with no task of their own.

The SDK's session manager gives each session a task for the session's whole life: it enters the transport's
`connect()` (a task group, and a router task that moves each outgoing message to the stream of its request) and runs
the dispatcher's read loop in it (another task group), over two message channels. An idle session held about 11 KiB
of that: anyio's bookkeeping for two long-lived tasks and three task groups, their coroutine frames, the channels.

`TasklessSessionManager` serves each session with the SDK's own parts (its transport, `JSONRPCDispatcher`,
`Connection` and `ServerRunner`, so every rule of the handshake era is still the SDK's) but without that task:
- the transport's inbound channel is an `Inlet`, which dispatches each message in the task that posted it; the
  dispatcher starts each request's handler in the manager's task group, as it would in its own;
- its outbound channel is an `Outlet`, which puts each message on its request's stream, or on the session's standing
  stream, in the task that wrote it, as the SDK's router task does;
- its idle scope is an `IdleCountdown`: one timer, moved only when it fires.

However the session ends (DELETE, its idle timeout, shutdown, an opening request that was refused) the transport's
`terminate()` closes the inlet: the handlers still in flight are cancelled, whoever waits for an answer from the
client is woken with CONNECTION_CLOSED, the manager forgets the session, and the connection's exit stack unwinds, as
when the SDK's task for the session ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from types import TracebackType
from typing import Any, Final, Self, cast

import anyio
import anyio.abc
from mcp.server.connection import Connection
from mcp.server.runner import ServerRunner, aclose_shielded
from mcp.server.streamable_http import GET_STREAM_KEY, EventMessage, EventStore, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp.shared.transport_context import TransportContext
from mcp.types import JSONRPCError, JSONRPCResponse
from starlette.types import Message, Receive, Scope, Send

__all__ = ["IdleCountdown", "Inlet", "Outlet", "PushedDispatcher", "TasklessSessionManager", "hold"]

logger = logging.getLogger(__name__)

_INLINE: Final = frozenset({"initialize"})
"""Awaited before the next message is taken, as the SDK's session loop has it: a client that pipelines `initialize`
with its next request sees the session initialized."""

_EARLY_SECONDS: Final = 0.001
"""How early an idle countdown may end: the event loop runs a timer a clock tick before its time."""

Item = SessionMessage | Exception


class Outlet:
    """The transport's outbound channel: each message goes to its request's stream, or to the standing stream
    when it belongs to no request, as the SDK's router task sends it (and to the event store first, if any)."""

    __slots__ = ("_json_only", "_store", "_streams")

    def __init__(self, transport: StreamableHTTPServerTransport) -> None:
        # The transport's own table and store (each made once, with the transport), read where its router reads them.
        self._streams: dict[str, tuple[Any, Any]] = getattr(transport, "_request_streams")  # noqa: B009  # pinned
        self._store: EventStore | None = getattr(transport, "_event_store")  # noqa: B009  # private; pinned
        self._json_only = transport.is_json_response_enabled

    async def send(self, session_message: SessionMessage) -> None:
        message = session_message.message
        metadata = session_message.metadata
        target: str | None = None
        if isinstance(message, JSONRPCResponse | JSONRPCError) and message.id is not None:
            target = str(message.id)
        elif isinstance(metadata, ServerMessageMetadata) and metadata.related_request_id is not None:
            if self._json_only:
                return  # a JSON body carries only the answer: nothing else has a wire
            target = str(metadata.related_request_id)
        stream_id = GET_STREAM_KEY if target is None else target
        event_id = None
        if self._store is not None:
            try:
                event_id = await self._store.store_event(stream_id, message)
            except Exception:  # the writer's task is a handler's, in the manager's task group: never raise into it
                logger.exception("the event store failed to keep a message for %s; sent without an event id", stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            logger.debug("no stream for a message of %s: not sent (a resuming client gets it from a store)", stream_id)
            return
        try:
            await stream[0].send(EventMessage(message, event_id))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._streams.pop(stream_id, None)

    async def aclose(self) -> None:
        """Nothing to close: the streams it writes to are the transport's."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.aclose()


class PushedDispatcher(JSONRPCDispatcher[TransportContext]):
    """The SDK's dispatcher, handed each message as it arrives rather than reading them in a loop of its own; it
    starts request handlers in `tasks` (the manager's task group)."""

    def __init__(self, outlet: Outlet, tasks: anyio.abc.TaskGroup) -> None:
        # `run()`, the only reader of the read stream, is never called.
        super().__init__(cast(Any, None), outlet, inline_methods=_INLINE)
        self._tg = tasks
        self._running = True

    def deliver(self, item: Item, runner: ServerRunner[Any]) -> Awaitable[None]:
        """Dispatch one message from the client, in the caller's task and context (its handler inherits it)."""
        return self._dispatch(item, runner.on_request, runner.on_notify, None)

    def close(self) -> None:
        """As the end of the SDK's loop: no more sends, handlers in flight cancelled, answers awaited woken."""
        self._running = False
        self._closed = True
        for in_flight in list(self._in_flight.values()):
            in_flight.scope.cancel()
        self._fan_out_closed()


class IdleCountdown:
    """The transport's idle scope, with the parts of anyio's `CancelScope` the transport uses (`deadline`,
    `cancel_called`, `cancel()`), as one timer: a deadline moved later moves no timer until it fires, when it is set
    again for the deadline of then (none while a request is in flight), or ends the session.

    Entering it holds the session as a request the transport serves holds it (the lane's requests and standing
    streams, see `hold`): counted in flight, no expiry until the last one ends, the timeout counted from then; it
    gives False when the session's idle period already ran out (the session is ending).
    """

    __slots__ = ("_deadline", "_expire", "_loop", "_timeout", "_timer", "_transport", "cancel_called")

    def __init__(
        self,
        transport: StreamableHTTPServerTransport,
        timeout: float,
        expire: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._transport = transport
        self._timeout = timeout
        self._expire = expire
        self._loop = loop
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self.cancel_called = False

    @property
    def deadline(self) -> float:
        return self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._deadline = value
        if value != math.inf and self._timer is None and not self.cancel_called:
            self._timer = self._loop.call_at(value, self._due)

    def __enter__(self) -> bool:
        self._transport._requests_in_flight += 1  # pyright: ignore[reportPrivateUsage]  # the SDK's own count
        if self.cancel_called:
            return False  # counted all the same: the block's end counts it out
        self._deadline = math.inf
        return True

    def __exit__(self, *exc_info: object) -> None:
        transport = self._transport
        transport._requests_in_flight -= 1  # pyright: ignore[reportPrivateUsage]
        if not transport._requests_in_flight:  # pyright: ignore[reportPrivateUsage]
            self.deadline = self._loop.time() + self._timeout

    def cancel(self) -> None:
        """End the session now, as its deadline passing does."""
        if self.cancel_called:
            return
        self.cancel_called = True
        self.stop()
        self._expire()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline == math.inf or self.cancel_called:
            return  # a request in flight: its end sets the deadline again
        if deadline - self._loop.time() > _EARLY_SECONDS:
            self._timer = self._loop.call_at(deadline, self._due)
            return
        self.cancel()


_NEVER_EXPIRES: Final = contextlib.nullcontext(True)


def hold(transport: StreamableHTTPServerTransport) -> contextlib.AbstractContextManager[bool]:
    """What holds the session of `transport` while a request the lane serves in it runs (see `IdleCountdown`);
    a session without an idle timeout needs no holding."""
    idle = cast(object, transport.idle_scope)  # an `IdleCountdown` in every session `TasklessSessionManager` serves
    return idle if isinstance(idle, IdleCountdown) else _NEVER_EXPIRES


class Inlet:
    """The transport's inbound channel: each message the client posts is dispatched at once; closing it (the
    transport's `terminate()`) ends the session."""

    __slots__ = ("_closed", "_countdown", "_dispatcher", "_ended", "_runner")

    def __init__(
        self,
        dispatcher: PushedDispatcher,
        runner: ServerRunner[Any],
        countdown: IdleCountdown | None,
        ended: Callable[[Connection], Awaitable[None]],
    ) -> None:
        self._dispatcher = dispatcher
        self._runner = runner
        self._countdown = countdown
        self._ended = ended
        """Told once the session has ended, with its connection (whose exit stack it unwinds)."""
        self._closed = False

    async def send(self, item: Item) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await self._dispatcher.deliver(item, self._runner)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._countdown is not None:
            self._countdown.stop()
        self._dispatcher.close()
        await self._ended(self._runner.connection)


class TasklessSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, serving each handshake-era session without a task of its own (see the module);
    admission, owners, the session limit, requests to sessions and their refusals are the SDK's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _require_sdk_parts()
        super().__init__(*args, **kwargs)
        self._ending = False

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncGenerator[None]:
        async with super().run():
            try:
                yield
            finally:
                # No task of a session's ends with the manager's task group: end the sessions still open.
                self._ending = True
                with anyio.CancelScope(shield=True):
                    for transport in list(self._server_instances.values()):
                        await transport.terminate()

    async def _serve_opening_request(
        self, http_transport: StreamableHTTPServerTransport, scope: Scope, receive: Receive, send: Send
    ) -> None:
        session_id = http_transport.mcp_session_id
        assert session_id is not None
        assert self._task_group is not None
        self._serve(http_transport, session_id, self._task_group)
        established = False
        try:
            status = await _answered_status(http_transport.handle_request, scope, receive, send)
            established = status is not None and status < 400
        finally:
            if not established:
                await self._discard_session(session_id, http_transport)

    def _serve(self, transport: StreamableHTTPServerTransport, session_id: str, tasks: anyio.abc.TaskGroup) -> None:
        """Give the transport its channels and its idle scope (what `connect()` gives it)."""
        outlet = Outlet(transport)
        dispatcher = PushedDispatcher(outlet, tasks)
        connection = Connection.for_loop(dispatcher, session_id=session_id)
        runner = ServerRunner(self.app, connection, self._lifespan_state)
        timeout: float | None = getattr(transport, "_idle_timeout")  # noqa: B009  # private; pinned by a test
        countdown = (
            None
            if timeout is None
            else IdleCountdown(
                transport, timeout, partial(self._expire, session_id, transport), asyncio.get_running_loop()
            )
        )
        transport.idle_scope = cast(anyio.CancelScope, countdown)
        inlet = Inlet(dispatcher, runner, countdown, partial(self._ended, session_id))
        setattr(transport, "_read_stream_writer", inlet)  # noqa: B010  # private; pinned by a test
        setattr(transport, "_write_stream", outlet)  # noqa: B010  # private; pinned by a test

    async def _ended(self, session_id: str, connection: Connection) -> None:
        """Forget the session, and unwind its connection's exit stack in a task of the manager's (as the session's
        own task did), so that its end (a DELETE, a shutdown ending every session) waits for no upstream session
        to close; while the manager itself ends, at once."""
        self._server_instances.pop(session_id, None)
        self._session_owners.pop(session_id, None)
        if self._task_group is not None and not self._ending:
            self._task_group.start_soon(aclose_shielded, connection)
        else:
            await aclose_shielded(connection)

    def _expire(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        logger.info("Session %s idle timeout", session_id)
        if self._task_group is not None:
            self._task_group.start_soon(self._discard_session, session_id, transport)


_SDK_PARTS: Final[dict[type, tuple[str, ...]]] = {
    StreamableHTTPSessionManager: ("_serve_opening_request", "_discard_session"),
    StreamableHTTPServerTransport: ("_read_stream_writer", "_write_stream", "terminate"),
    JSONRPCDispatcher: ("_dispatch", "_fan_out_closed"),
}
"""The SDK's parts a taskless session drives or replaces (the instance attributes besides are pinned by the tests)."""


def _require_sdk_parts() -> None:
    """Refuse an SDK without them, naming what is missing, rather than fail at a session's first message."""
    missing = [
        f"{owner.__name__}.{name}" for owner, names in _SDK_PARTS.items() for name in names if not hasattr(owner, name)
    ]
    if missing:
        raise RuntimeError(
            f"this mcp SDK no longer has {', '.join(missing)}, which the proxy's Streamable HTTP sessions are served "
            "with; pin mcp to a supported release"
        )


async def _answered_status(
    app: Callable[[Scope, Receive, Send], Awaitable[None]], scope: Scope, receive: Receive, send: Send
) -> int | None:
    """Run `app` for one request; the HTTP status it answered with (None if it sent no response)."""
    status: int | None = None

    async def watching(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    await app(scope, receive, watching)
    return status
