"""The legacy HTTP+SSE transport (`GET /sse` for the session's event stream, `POST /messages/?session_id=` for
each message) for older clients, with its calls and listings in the message lane (see `lane_messages`).

The SDK's transport parses each POST into pydantic models, runs it in a task of its server and writes every answer
as an event on the session's stream (2.1 ms of proxy CPU for a small call). Once the session's connection is
adopted, a POST the lane takes (a `tools/call`, a listing, an answer to a question asked during a lane call, a
cancellation of a lane call) is parsed once and answered `202 Accepted` as the SDK answers it, and its answer is
written as one event on the same stream, between the SDK's own (an ASGI `send` writes a whole event at once).

A POST reaches the lane only after the transport's own checks, made as the SDK makes them: its `Content-Type`,
Host and Origin (`Acceptance`, the verdict remembered per header values), a live session named by its
`?session_id=`, opened by the same principal (`compat.legacy_session`), a body within the limit. Anything else,
and whatever the lane doubts, goes to the SDK's transport as it came, which answers it (400, 403, 404, 413, 421).
"""

from __future__ import annotations

from typing import Final, Protocol

import anyio
from mcp.server.sse import SseServerTransport
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from mcpstore_proxy.compat import legacy_session, newest_legacy_session
from mcpstore_proxy.lane_messages import MessageLane
from mcpstore_proxy.lane_wire import Acceptance, Unread, read_body, replaying, sse_event, too_large
from mcpstore_proxy.operations import OperationObserver
from mcpstore_proxy.request_headers import request_headers
from mcpstore_proxy.server import ProxyServer

__all__ = ["LegacySse"]

_ACCEPTED: Final = Response("Accepted", status_code=202)
"""The transport's own answer to a message it took."""


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class LegacySse:
    """The legacy transport's two endpoints: `stream` (`GET /sse`: one client, whose connection is its session
    until the stream closes) and `post` (`POST /messages/`)."""

    def __init__(
        self,
        server: ProxyServer,
        security: TransportSecuritySettings | None,
        *,
        observer: OperationObserver | None = None,
        names_principals: bool = False,
        max_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
    ) -> None:
        self.transport = SseServerTransport(
            "/messages/", security_settings=security, max_request_body_size=max_body_size
        )
        self._server = server
        self._acceptance = Acceptance(TransportSecurityMiddleware(security), legacy_sse=True)
        self._observer = observer
        self._names_principals = names_principals
        self._max_body_size = max_body_size
        self._streams: set[_Closable] = set()
        self._connecting = 0
        self._lanes: dict[str, tuple[MessageLane, _EventStream]] = {}
        """The lane of each open session, and its event stream, by session id (hex)."""
        self._served_before = (0, 0)
        """Calls and listings the lanes of sessions already closed served."""

    @property
    def open(self) -> int:
        """Legacy clients connected or connecting."""
        return len(self._streams) + self._connecting

    @property
    def served(self) -> tuple[int, int]:
        """Calls and listings the lane took (`legacy_lane_calls`, `legacy_lane_listings` in `/admin/status`)."""
        calls, listings = self._served_before
        for lane, _ in self._lanes.values():
            calls, listings = calls + lane.calls_served, listings + lane.listings_served
        return calls, listings

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`GET /sse`: the session's event stream, and the session itself, until the client leaves (or
        `close_all`)."""
        self._connecting += 1  # counted from the first step, so that the front door's limit holds
        is_connected = False
        events = _EventStream(send)
        try:
            async with self.transport.connect_sse(scope, receive, events.send) as (read_stream, write_stream):
                session = newest_legacy_session(self.transport)
                lane = MessageLane(
                    self._server,
                    session,
                    lambda: self._server.downstream.legacy(session),
                    takes_modern=False,  # a 2026-07-28 client over this transport: the SDK's
                    observer=self._observer,
                    names_principals=self._names_principals,
                )
                self._streams.add(write_stream)
                self._lanes[session] = (lane, events)
                self._connecting -= 1
                is_connected = True
                try:
                    async with lane.running():
                        await self._server.run(read_stream, write_stream, self._server.create_initialization_options())
                finally:
                    self._streams.discard(write_stream)
                    del self._lanes[session]
                    calls, listings = self._served_before
                    self._served_before = (calls + lane.calls_served, listings + lane.listings_served)
        except ValueError:
            if is_connected:
                raise  # not the refusal: a failure of the session's own, which must not pass for one
            return  # refused by the Host/Origin checks, which already answered 421 or 403
        finally:
            events.is_open = False
            if not is_connected:
                self._connecting -= 1

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /messages/?session_id=`: one message of a session, in the lane when it takes it."""
        found = self._lane_for(scope) if scope["method"] == "POST" else None
        if found is None or not await self._acceptance.verdict(scope):
            await self.transport.handle_post_message(scope, receive, send)
            return
        if request_headers(scope).declares_more_than(self._max_body_size):
            await self.transport.handle_post_message(scope, receive, send)  # refused unread (413)
            return
        body = await read_body(receive, self._max_body_size)
        if body is Unread.TOO_LARGE:
            await too_large(scope, receive, send)
            return
        if not isinstance(body, bytes):
            return  # the client left before it finished sending
        lane, events = found
        if lane.take(body, events.reply, scope):
            await _ACCEPTED(scope, receive, send)
            return
        await self.transport.handle_post_message(scope, replaying(body, receive), send)

    def _lane_for(self, scope: Scope) -> tuple[MessageLane, _EventStream] | None:
        session = legacy_session(self.transport, scope)
        return self._lanes.get(session) if session is not None else None

    async def close_all(self) -> None:
        """End every legacy stream: closing our write side completes its response, which ends its session."""
        for stream in list(self._streams):
            with anyio.move_on_after(1, shield=True):
                await stream.aclose()


class _EventStream:
    """A session's event stream, as the SDK's transport writes to it (`send`) and as the lane does (`reply`): an
    event at a time, each in one ASGI message, so that neither splits the other's."""

    __slots__ = ("_send", "is_open")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.is_open = True
        """Whether events may still be written: not once the response has ended."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.is_open = False
        await self._send(message)

    async def reply(self, body: bytes) -> None:
        if not self.is_open:
            raise anyio.ClosedResourceError
        await self._send({"type": "http.response.body", "body": sse_event(body), "more_body": True})
