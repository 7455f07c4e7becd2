"""One test per assumption that `mcpstore_proxy.compat` makes about the private parts of uvicorn (those about
`mcp` are in `test_compat`): its signal handling, its header values, and its response cycles' writes.

If an upgrade breaks one, it fails here, by name, rather than somewhere deep in a proxied call.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from mcpstore_proxy import compat
from tests.support import free_port, wait_until

pytestmark = pytest.mark.anyio


def test_uvicorn_takes_its_signal_handlers_in_capture_signals_and_the_override_takes_none() -> None:
    before = signal.getsignal(signal.SIGTERM)
    config = uvicorn.Config(Starlette(), port=free_port(), log_level="warning")
    with uvicorn.Server(config).capture_signals():
        assert signal.getsignal(signal.SIGTERM) != before  # the assumption: this is where uvicorn takes SIGTERM
    with compat.SignalFreeServer(config).capture_signals():
        assert signal.getsignal(signal.SIGTERM) == before


@asynccontextmanager
async def _connected(app: Any, protocol: str = "httptools") -> AsyncGenerator[Any]:
    """A raw TCP connection to `app` behind a real uvicorn (its `protocol` parser) on a loopback port."""
    port = free_port()
    config = uvicorn.Config(app, port=port, http=protocol, interface="asgi3", log_level="warning", lifespan="off")
    server = compat.SignalFreeServer(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await wait_until(lambda: server.started, what="uvicorn to start")
        try:
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                yield stream
        finally:
            server.should_exit = True


@pytest.mark.parametrize("trimmed", [False, True])
async def test_uvicorns_httptools_protocol_keeps_whitespace_after_a_header_value_which_the_wrapper_removes(
    trimmed: bool,
) -> None:
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.extend(value for name, value in scope["headers"] if name == b"mcp-name")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async with _connected(compat.TrimmedFieldValues(app) if trimmed else app) as stream:
        await stream.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nMcp-Name:   echo \t\r\nConnection: close\r\n\r\n")
        while await stream.receive():
            if seen:
                break
    assert seen == ([b"echo"] if trimmed else [b"echo \t"])  # llhttp drops the leading whitespace only


class _Recorded:
    """A transport as it was: every write it is given, kept for the test to see, and passed on."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        self.writes.append(b"".join(data))  # one write: a single system call (writev)
        self._transport.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _answered(stream: Any, until: bytes) -> bytes:
    received = b""
    with anyio.fail_after(5):
        while not received.endswith(until):
            received += await stream.receive()
    return received


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
async def test_a_whole_response_goes_through_uvicorns_transport_in_one_write_and_a_close_after_it(
    protocol: str,
) -> None:
    writes: list[list[bytes]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        cycle = send.__self__  # pyright: ignore[reportFunctionMemberAccess]
        cycle.transport = recorded = _Recorded(cycle.transport)
        writes.append(recorded.writes)
        body = scope["path"].encode() * 3
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
        await compat.respond_at_once(send, start, {"type": "http.response.body", "body": body, "more_body": False})

    async with _connected(app, protocol) as stream:
        await stream.send(b"GET /one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = await _answered(stream, b"/one/one/one")
        await stream.send(b"GET /two HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        second = await _answered(stream, b"/two/two/two")
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await stream.receive()  # closed after the answer, as asked
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in second.lower()
    assert writes == [[first], [second]]


async def test_a_whole_response_reaches_a_send_that_is_not_uvicorns_as_its_two_messages() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    start: Message = {"type": "http.response.start", "status": 200, "headers": []}
    body: Message = {"type": "http.response.body", "body": b"{}", "more_body": False}
    await compat.respond_at_once(send, start, body)
    assert sent == [start, body]
