"""One test per assumption that `mcpstore_proxy.compat_uvicorn` makes about the private parts of uvicorn (those about
`mcp` are in `test_compat`): its signal handling, its header values, and its response cycles' writes.

If an upgrade breaks one, it fails here, by name, rather than somewhere deep in a proxied call.
"""

from __future__ import annotations

import inspect
import re
import signal
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http import httptools_impl

from mcpstore_proxy import compat_uvicorn
from tests.support import free_port, wait_until

pytestmark = pytest.mark.anyio


def test_uvicorn_takes_its_signal_handlers_in_capture_signals_and_the_override_takes_none() -> None:
    before = signal.getsignal(signal.SIGTERM)
    config = uvicorn.Config(Starlette(), port=free_port(), log_level="warning")
    with uvicorn.Server(config).capture_signals():
        assert signal.getsignal(signal.SIGTERM) != before  # the assumption: this is where uvicorn takes SIGTERM
    with compat_uvicorn.SignalFreeServer(config).capture_signals():
        assert signal.getsignal(signal.SIGTERM) == before


@asynccontextmanager
async def _connected(
    app: Any, protocol: Any = "httptools", served: list[uvicorn.Server] | None = None
) -> AsyncGenerator[Any]:
    """A raw TCP connection to `app` behind a real uvicorn (its `protocol` parser, or protocol class) on a loopback
    port; the server is put in `served`, for a test to see its connections."""
    port = free_port()
    config = uvicorn.Config(app, port=port, http=protocol, interface="asgi3", log_level="warning", lifespan="off")
    server = compat_uvicorn.SignalFreeServer(config)
    if served is not None:
        served.append(server)
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

    async with _connected(compat_uvicorn.TrimmedFieldValues(app) if trimmed else app) as stream:
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
        whole = {"type": "http.response.body", "body": body, "more_body": False}
        await compat_uvicorn.respond_at_once(send, start, whole)

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
    await compat_uvicorn.respond_at_once(send, start, body)
    assert sent == [start, body]


async def _path_echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


async def test_the_lean_protocol_answers_pipelined_requests_in_order_and_queues_nothing_until_one_is() -> None:
    served: list[uvicorn.Server] = []
    async with _connected(_path_echo, compat_uvicorn.LeanHttpToolsProtocol, served) as stream:
        await stream.send(b"GET /alone HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await _answered(stream, b"/alone")).startswith(b"HTTP/1.1 200")
        (connection,) = served[0].server_state.connections
        assert isinstance(connection, compat_uvicorn.LeanHttpToolsProtocol)
        assert getattr(connection.pipeline, "_queue") is None  # noqa: B009  # no deque made for this connection
        requests = b"".join(b"GET /%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % number for number in range(1, 4))
        await stream.send(requests)  # three at once: pipelined
        answered = await _answered(stream, b"/3")
        assert re.findall(rb"\r\n\r\n(/\d)", answered) == [b"/1", b"/2", b"/3"]  # each answer's body, in order
        assert not connection.pipeline


def test_uvicorns_httptools_protocol_uses_its_pipeline_only_as_the_lean_queue_allows() -> None:
    source = inspect.getsource(httptools_impl.HttpToolsProtocol)
    uses = re.findall(r"self\.pipeline\b(\.\w+|\s*[:=]|\W)", source)
    assert set(uses) <= {".appendleft", ".pop", ":"}, uses  # its two methods, its annotation, its truth
