"""Every place the proxy leans on a private part of a dependency, and nowhere else.

Each function here wraps one assumption about `mcp` (pinned to the minor
release in pyproject.toml) or uvicorn, and `tests/test_compat.py` holds one
test per assumption, so an upgrade that breaks one fails there, by name,
instead of somewhere deep in a proxied call.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import mcp.server.streamable_http
import sse_starlette
import uvicorn
from mcp.client._transport import TransportStreams
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = [
    "SignalFreeServer",
    "TransportStreams",
    "downstream_connection",
    "frame_answers_by_first_event",
    "open_http_sessions",
    "set_session_limit",
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


class SignalFreeServer(uvicorn.Server):
    """uvicorn without its own signal handling (`capture_signals`): after a graceful stop it re-raises the
    signal, which would kill the process before the proxy has drained and closed its upstreams."""

    @contextmanager
    def capture_signals(self) -> Generator[None]:
        yield
