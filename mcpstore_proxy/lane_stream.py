"""The lane's standing event stream: a client's `GET` in an established Streamable HTTP session, served without
sse_starlette.

The SDK serves that stream with sse_starlette: per stream a response object, a task group with four tasks (its
sender, pings, a disconnect listener and a shutdown listener), a task that copies the session's messages into a
memory stream of its own, and that stream. Held open by every idle client, it was a fifth of the proxy's memory per
idle session. Here the request's own task writes each message as it comes, and one bare asyncio task both watches
for the client hanging up and sends a comment line every `ping_seconds`, as sse_starlette does, so that proxies
and load balancers in between keep the connection.

The messages come from where the SDK's transport puts them for its own stream (`compat.standalone_stream`), framed
as its writer frames them. The stream ends when the client hangs up, or when the session closes the standalone
stream (the session ends: DELETE, idle expiry, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp.server.streamable_http import EventMessage
from starlette.types import Receive, Send

from mcpstore_proxy.lane_wire import SESSION_ID, SSE_HEADERS, sse_event

__all__ = ["PING_SECONDS", "serve_event_stream"]

PING_SECONDS: Final = 15.0
"""sse_starlette's interval."""

_PING: Final = {"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True}


async def serve_event_stream(
    messages: MemoryObjectReceiveStream[EventMessage],
    session_id: str,
    receive: Receive,
    send: Send,
    *,
    ping_seconds: float = PING_SECONDS,
) -> None:
    """Send `messages` as server-sent events until they end or the client hangs up."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, (SESSION_ID, session_id.encode())]}
    )
    with anyio.CancelScope() as hung_up:
        watcher = asyncio.get_running_loop().create_task(_watch(receive, send, hung_up, ping_seconds))
        try:
            async for event in messages:
                await send({"type": "http.response.body", "body": _framed(event), "more_body": True})
        except anyio.ClosedResourceError:
            pass  # the session closed the stream under us
        finally:
            watcher.cancel()
    if not hung_up.cancelled_caught:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch(receive: Receive, send: Send, hung_up: anyio.CancelScope, ping_seconds: float) -> None:
    """Until the client hangs up, ping it every `ping_seconds`; then end the stream.

    A bare task, cancelled when the stream ends: nothing awaits it, so whatever ends the watch must end in the
    stream's cancellation, not here. Two sends at once are safe: each is one write, after a wait to drain."""
    with contextlib.suppress(Exception):  # a connection that cannot be read from is a client gone
        while True:
            try:
                async with asyncio.timeout(ping_seconds):
                    message = await receive()
            except TimeoutError:
                await send(_PING)
                continue
            if message.get("type") == "http.disconnect":
                break
    hung_up.cancel()


def _framed(event: EventMessage) -> bytes:
    """One message as the SDK's writer frames it (`event: message`, its id if the session keeps events)."""
    return sse_event(event.message.model_dump_json(by_alias=True, exclude_unset=True).encode(), event.event_id)
