"""Every place the proxy leans on a private part of uvicorn, and nowhere else.

Each class or function here wraps one assumption about how uvicorn serves a connection, and
`tests/test_compat_uvicorn.py` holds one test per assumption, so an upgrade that breaks one fails there, by name.
The `mcp` SDK's are in `compat`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Generator
from contextlib import contextmanager
from typing import Any, Final, cast

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http import h11_impl, httptools_impl

from mcpstore_proxy.request_headers import request_headers

__all__ = ["LeanHttpToolsProtocol", "SignalFreeServer", "TrimmedFieldValues", "respond_at_once"]


class TrimmedFieldValues:
    """ASGI headers with the whitespace around each value removed, as RFC 9110 §5.5 has parsers do: uvicorn's
    h11 protocol trims it, its httptools protocol keeps what follows a value, and the SDK compares values exactly
    (`Mcp-Name`).

    Not a coroutine function itself, so a server must be told it is an ASGI 3 app (uvicorn's `interface`)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if "headers" in scope and request_headers(scope).is_padded:  # found for the layers after this too
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            scope = {**scope, "headers": [(name, value.strip(b" \t")) for name, value in headers]}
        return self._app(scope, receive, send)  # the app's own coroutine: a frame less per request


_UVICORN_CYCLES: Final = (h11_impl.RequestResponseCycle, httptools_impl.RequestResponseCycle)


class _Gathered:
    """What uvicorn's response cycle writes while it sends a whole response: kept, to go out as one write."""

    __slots__ = ("chunks", "is_closed", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []
        self.is_closed = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        self.is_closed = True

    def is_closing(self) -> bool:
        return self.is_closed or self.transport.is_closing()


async def respond_at_once(send: Send, start: Message, body: Message) -> None:
    """Send a response's start and its whole body (`more_body` false); through uvicorn, in one write.

    uvicorn's response cycle writes the status line and headers to its transport the moment they are sent, then
    the body: two system calls and two TCP segments for an answer that is ready whole, about 4% of the proxy's
    CPU per forwarded call. Here the cycle's `transport` is swapped, for the two sends, for one that keeps what
    they write (and a close, when the connection is not kept alive); then that goes out in one write (`writelines`:
    one system call, the body not copied), and the close after it. Any other `send` (an app in between, another
    server) gets the two messages as they are."""
    cycle: Any = getattr(send, "__self__", None)
    if type(cycle) not in _UVICORN_CYCLES:
        await send(start)
        await send(body)
        return
    transport: asyncio.Transport = cycle.transport
    gathered = _Gathered(transport)
    cycle.transport = gathered
    try:
        await send(start)
        await send(body)
    finally:
        cycle.transport = transport
        if gathered.chunks and not transport.is_closing():
            transport.writelines(gathered.chunks)
        if gathered.is_closed:
            transport.close()


class _Pipeline:
    """What uvicorn's httptools protocol queues a connection's pipelined requests in (`pipeline`), but made only
    when a client pipelines: uvicorn makes a deque (0.7 KiB) for every connection, kept for the connection's whole
    life, and clients seldom pipeline."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[Any] | None = None

    def __bool__(self) -> bool:
        return bool(self._queue)

    def appendleft(self, item: Any) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.appendleft(item)

    def pop(self) -> Any:
        if not self._queue:
            raise IndexError("pop from an empty pipeline")
        return self._queue.pop()


class LeanHttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """uvicorn's httptools protocol (what `http="httptools"` serves with), its queue of pipelined requests made only
    when a request is pipelined (uvicorn uses it only through `appendleft`, `pop` and its truth; pinned by a test)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = cast(Any, _Pipeline())


class SignalFreeServer(uvicorn.Server):
    """uvicorn without its own signal handling (`capture_signals`): after a graceful stop it re-raises the
    signal, which would kill the process before the proxy has drained and closed its upstreams."""

    @contextmanager
    def capture_signals(self) -> Generator[None]:
        yield
