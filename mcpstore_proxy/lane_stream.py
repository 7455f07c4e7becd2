"""The lane's standing event stream: a client's `GET` in an established Streamable HTTP session, served without
sse_starlette, and without a memory stream or a task of its own.

The SDK serves that stream with sse_starlette: per stream a response object, a task group with four tasks (its
sender, pings, a disconnect listener and a shutdown listener), a task that copies the session's messages into a
memory stream of its own, and that stream. Held open by every idle client, it was a fifth of the proxy's memory per
idle session. Here a `StandingStream` takes the place of the memory stream the SDK's transport sends those messages
to (`compat.standing_stream`): the transport's message router hands it each message and it goes out on the response
then and there, framed as the SDK's writer frames it (the router waits for the write, and for the response to
start, as it would wait on a full buffer). The request's own task, meanwhile, watches for the client hanging up,
and a timer of the event loop's sends a comment line every `ping_seconds`, as sse_starlette does, so that proxies
and load balancers in between keep the connection: one timer handle for the stream's whole life, rather than a
timeout and a cancel scope around its watch (1 KiB per idle session), each ping written in a short task of its own.

The stream ends when the client hangs up, or when the session closes it (the session ends: DELETE, idle expiry,
shutdown); then the response ends once every message being written is out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import anyio
from mcp.server.streamable_http import EventMessage
from starlette.types import Receive, Send

from mcpstore_proxy.lane_wire import SESSION_ID, SSE_HEADERS, sse_event
from mcpstore_proxy.task_scope import TaskCancelScope

__all__ = ["PING_SECONDS", "StandingStream"]

PING_SECONDS: Final = 15.0
"""sse_starlette's interval."""

_PING: Final = b": ping\r\n\r\n"


class StandingStream:
    """One session's standing event stream, as the SDK's transport holds it: both ends of the stream it sends the
    session's messages outside any request to (`send`, `close`, `aclose`), and the response they go out on
    (`serve`)."""

    __slots__ = ("_ended", "_in_flight", "_is_closed", "_is_open", "_on_close", "_opened", "_pinging", "_send")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._is_open = False
        """Whether the response has started: until then, the router waits (`_opened`), as on a full buffer."""
        self._opened: asyncio.Future[None] | None = None
        self._is_closed = False
        self._in_flight = 0
        """Writes under way: the response ends only once none is."""
        self._ended: asyncio.Future[None] | None = None
        self._on_close: Callable[[], None] | None = None
        self._pinging: asyncio.Task[None] | None = None
        """The ping being written, if one is."""

    async def send(self, event: EventMessage) -> None:
        """Send one of the session's messages on the stream (the SDK's router calls this).

        Raises:
            anyio.ClosedResourceError: the stream ended (the router then forgets it, as it forgets a closed memory
                stream).
        """
        if not self._is_open and not self._is_closed:  # put in place just before the response starts: rare
            opened = self._opened
            if opened is None or opened.done():  # done: cancelled under a router that gave up waiting
                opened = self._opened = asyncio.get_running_loop().create_future()
            await opened
        if self._is_closed:
            raise anyio.ClosedResourceError
        await self._write(
            sse_event(event.message.model_dump_json(by_alias=True, exclude_unset=True).encode(), event.event_id)
        )

    def close(self) -> None:
        """End the stream (the SDK closes it as the session ends); the response ends once nothing is being
        written."""
        if not self._is_closed:
            self._is_closed = True
            self._open()
            if self._on_close is not None:
                self._on_close()

    async def aclose(self) -> None:
        self.close()

    async def serve(self, session_id: str, receive: Receive, *, ping_seconds: float = PING_SECONDS) -> None:
        """Send the response: the messages as they come, a ping while none does, until the client hangs up or the
        stream is closed."""
        start = [*SSE_HEADERS, (SESSION_ID, session_id.encode())]
        await self._send({"type": "http.response.start", "status": 200, "headers": start})
        self._is_open = True
        self._open()
        task = asyncio.current_task()
        assert task is not None  # uvicorn serves each request in a task
        pings = _Pings(self, ping_seconds)
        hung_up = False
        try:
            with TaskCancelScope(task) as closed:
                self._on_close = closed.cancel
                if self._is_closed:
                    closed.cancel()
                hung_up = await _hung_up(receive)
        finally:
            pings.stop()
            self._on_close = None
        if hung_up:
            self.close()  # nothing more is written to a client gone
            return
        if self._in_flight:
            self._ended = asyncio.get_running_loop().create_future()
            await self._ended
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def ping(self) -> None:
        """Write a comment line, unless the stream is closed or the last ping is still being written."""
        if self._is_closed or self._pinging is not None:
            return
        self._pinging = asyncio.get_running_loop().create_task(self._write(_PING))
        self._pinging.add_done_callback(self._pinged)

    def _pinged(self, task: asyncio.Task[None]) -> None:
        self._pinging = None
        if not task.cancelled():
            task.exception()  # a ping to a client gone: its watch sees the hang-up

    def _open(self) -> None:
        """Let a message waiting for the response to start go on (to be sent, or refused once closed)."""
        opened = self._opened
        if opened is not None and not opened.done():
            opened.set_result(None)

    async def _write(self, chunk: bytes) -> None:
        self._in_flight += 1
        try:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            self._in_flight -= 1
            ended = self._ended
            if not self._in_flight and ended is not None and not ended.done():
                ended.set_result(None)


class _Pings:
    """Pings `stream` every `seconds` (a timer of the event loop's, re-armed at each ping) until stopped."""

    __slots__ = ("_handle", "_seconds", "_stream")

    def __init__(self, stream: StandingStream, seconds: float) -> None:
        self._stream = stream
        self._seconds = seconds
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(seconds, self._due)

    def _due(self) -> None:
        self._stream.ping()
        self._handle = asyncio.get_running_loop().call_later(self._seconds, self._due)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _hung_up(receive: Receive) -> bool:
    """Wait for the client to hang up (True)."""
    try:
        while (await receive()).get("type") != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 - a connection that cannot be read from is a client gone
        pass
    return True
