"""A stdio upstream's pipes as the session's streams (`stdio_pipes`), with real child processes."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import pytest
from mcp import MCPError, StdioServerParameters, types
from mcp.shared.message import SessionMessage

from mcpstore_proxy.compat import ReadStream, TransportStreams
from mcpstore_proxy.direct_requests import DirectRequests
from mcpstore_proxy.stdio_pipes import StdioPipes
from mcpstore_proxy.transports import SessionReadStream
from tests.support import is_alive, wait_until

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _child(script: str) -> AsyncGenerator[TransportStreams]:
    parameters = StdioServerParameters(command=sys.executable, args=["-c", textwrap.dedent(script)])
    async with StdioPipes(parameters, os.open(os.devnull, os.O_WRONLY)) as streams:
        yield streams


def _message(item: SessionMessage | Exception) -> types.JSONRPCMessage:
    assert isinstance(item, SessionMessage), item
    return item.message


async def test_the_upstreams_stdout_is_read_one_message_per_line_in_order_however_long_a_line_is() -> None:
    script = """
        import json, sys
        out = sys.stdout.buffer
        def write(message):
            out.write(json.dumps(message).encode() + b"\\n")
        write({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "first"}})
        write({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "x" * 10_000_000}]}})
        out.write(b"not json\\n\\n")
        write({"jsonrpc": "2.0", "id": 2, "result": {}})
    """
    async with _child(script) as (read_stream, _):
        first, large, bad, last = [await read_stream.receive() for _ in range(4)]
        with pytest.raises(anyio.EndOfStream):
            await read_stream.receive()
    assert isinstance(_message(first), types.JSONRPCNotification)
    large_message = _message(large)
    assert isinstance(large_message, types.JSONRPCResponse)
    assert large_message.result["content"][0]["text"] == "x" * 10_000_000
    assert isinstance(bad, ValueError)  # reported to the session, which goes on
    assert _message(last) == types.JSONRPCResponse(jsonrpc="2.0", id=2, result={})


async def test_a_message_sent_is_one_line_on_the_upstreams_stdin() -> None:
    script = """
        import sys
        for line in sys.stdin:
            sys.stdout.write(line)
            sys.stdout.flush()
    """
    request = types.JSONRPCRequest(jsonrpc="2.0", id=7, method="tools/call", params={"name": "echo"})
    async with _child(script) as (read_stream, write_stream):
        await write_stream.send(SessionMessage(request))
        await write_stream.send(SessionMessage(request.model_copy(update={"id": 8})))
        echoed = [_message(await read_stream.receive()) for _ in range(2)]
    assert echoed == [request, request.model_copy(update={"id": 8})]


async def test_sending_to_an_upstream_that_has_exited_fails_as_a_broken_stream() -> None:
    ping = SessionMessage(types.JSONRPCNotification(jsonrpc="2.0", method="ping"))
    async with _child("pass") as (read_stream, write_stream):
        with pytest.raises(anyio.EndOfStream):
            await read_stream.receive()
        # The pipe reports the reader's exit to the write after the one that met it, at the latest.
        with anyio.fail_after(10), pytest.raises(anyio.BrokenResourceError):  # noqa: PT012
            while True:
                await write_stream.send(ping)
                await anyio.sleep(0.01)


async def test_leaving_stops_an_upstream_that_ignores_its_stdin_closing_and_the_children_it_started() -> None:
    script = """
        import json, os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        params = {"pid": os.getpid(), "child": child.pid}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "method": "pids", "params": params}) + "\\n")
        sys.stdout.flush()
        while True:
            time.sleep(1)
    """
    async with _child(script) as (read_stream, _):
        announced = _message(await read_stream.receive())
    assert isinstance(announced, types.JSONRPCNotification)
    assert announced.params is not None
    assert not is_alive(announced.params["pid"])  # waited for: the upstream is the proxy's own child
    # The child's parent is gone, so nothing waits for it: a SIGKILL to the group ends it a moment later.
    child: int = announced.params["child"]
    await wait_until(lambda: not is_alive(child), what="the upstream's child to be gone")


# The proxy's own requests (`DirectRequests`) over the pipes: raw JSON both ways, past the SDK's models.

_ANSWERING = """
    import json, sys
    for line in sys.stdin:
        request = json.loads(line)
        if "id" not in request:
            continue  # a notification
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                                     "params": {"level": "info", "data": "before"}}) + "\\n")
        sys.stdout.write(json.dumps(ANSWER(request)) + "\\n")
        sys.stdout.flush()
"""


@asynccontextmanager
async def _direct(answer: str) -> AsyncGenerator[tuple[DirectRequests, list[SessionMessage | Exception]]]:
    """An upstream answering each request with `answer` (a Python expression of `request`), and the messages
    its stdout gave the session (those the requests did not take)."""
    script = f"ANSWER = lambda request: {answer}\n" + textwrap.dedent(_ANSWERING)
    async with _child(script) as (read_stream, write_stream), anyio.create_task_group() as tg:
        direct = DirectRequests(write_stream)
        session_saw: list[SessionMessage | Exception] = []
        observed = SessionReadStream(read_stream, lambda: None, direct)

        async def read() -> None:
            with suppress(anyio.EndOfStream, anyio.ClosedResourceError):
                while True:
                    item = await observed.receive()
                    # A copy: the stream empties the message it gave out when the next is asked for.
                    kept = item if isinstance(item, Exception) else SessionMessage(item.message, item.metadata)
                    session_saw.append(kept)

        tg.start_soon(read)
        yield direct, session_saw
        tg.cancel_scope.cancel()


async def test_an_answer_to_the_proxys_own_request_reaches_it_as_written_and_the_session_sees_only_the_rest() -> None:
    answer = '{"jsonrpc": "2.0", "id": request["id"], "result": {"request": request, "x-extra": {"kept": [1, 2.5]}}}'
    async with _direct(answer) as (direct, session_saw):
        result = await direct.request("tools/call", {"name": "echo", "arguments": {"n": 1}}, timeout=10)
        second = await direct.request("ping", None, timeout=10)
        await wait_until(lambda: len(session_saw) == 2)
    assert result == {
        "request": {
            "jsonrpc": "2.0",
            "id": "mcpstore-1",
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"n": 1}},
        },
        "x-extra": {"kept": [1, 2.5]},
    }
    assert second["request"] == {"jsonrpc": "2.0", "id": "mcpstore-2", "method": "ping"}  # no "params": null
    assert [_message(item) for item in session_saw] == [
        types.JSONRPCNotification(
            jsonrpc="2.0", method="notifications/message", params={"level": "info", "data": "before"}
        )
    ] * 2


async def test_numbers_in_an_answer_to_the_proxys_own_request_arrive_exactly_as_written() -> None:
    numbers = '{"big": 2**70 + 1, "neg": -(2**65) - 1, "x": 0.1, "e": 1e300}'
    answer = f'{{"jsonrpc": "2.0", "id": request["id"], "result": {numbers}}}'
    async with _direct(answer) as (direct, _):
        result = await direct.request("tools/call", {"name": "echo"}, timeout=10)
    assert result == {"big": 2**70 + 1, "neg": -(2**65) - 1, "x": 0.1, "e": 1e300}
    assert type(result["big"]) is int


async def test_a_server_that_keeps_numeric_ids_in_32_bits_still_answers_the_proxys_own_requests() -> None:
    answer = (
        '{"jsonrpc": "2.0", "id": request["id"], "result": {"ok": True}} '
        'if isinstance(request["id"], str) or -(2**31) <= request["id"] < 2**31 '
        'else {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "id out of range"}}'
    )
    async with _direct(answer) as (direct, _):
        with anyio.fail_after(10):
            assert await direct.request("tools/call", {"name": "echo"}, timeout=10) == {"ok": True}


async def test_an_upstreams_error_answer_to_the_proxys_own_request_arrives_as_that_error() -> None:
    answer = '{"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32602, "message": "bad", "data": {"k": 1}}}'
    async with _direct(answer) as (direct, _):
        with pytest.raises(MCPError) as raised:
            await direct.request("tools/call", {"name": "echo"}, timeout=10)
    assert (raised.value.error.code, raised.value.error.message, raised.value.error.data) == (-32602, "bad", {"k": 1})


@pytest.mark.parametrize(
    "answer",
    [
        '{"jsonrpc": "2.0", "id": request["id"], "result": [1, 2]}',
        '{"jsonrpc": "2.0", "id": request["id"], "result": None}',
        '{"jsonrpc": "2.0", "id": request["id"], "error": {"code": "bad", "message": 1}}',
        '{"jsonrpc": "2.0", "id": request["id"], "result": {}, "error": {"code": 1, "message": "both"}}',
    ],
)
async def test_an_answer_that_is_neither_a_result_object_nor_an_error_fails_its_request_at_once_showing_it(
    answer: str,
) -> None:
    async with _direct(answer) as (direct, _):
        with anyio.fail_after(10), pytest.raises(MCPError) as raised:
            await direct.request("tools/call", {"name": "echo"}, timeout=10)
    assert raised.value.error.code == types.INTERNAL_ERROR
    assert "neither a result object nor a JSON-RPC error" in raised.value.error.message
    assert "mcpstore-1" in raised.value.error.message


async def test_a_request_to_an_upstream_that_stopped_reading_its_stdin_fails_at_its_deadline() -> None:
    script = """
        import sys, time
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        time.sleep(60)
    """
    async with _child(script) as (read_stream, write_stream):
        direct = DirectRequests(write_stream)
        assert isinstance(await read_stream.receive(), Exception)  # "ready": the child runs, and reads nothing
        with anyio.fail_after(10), pytest.raises(TimeoutError):
            await direct.request("tools/call", {"name": "echo", "arguments": {"text": "x" * 1_000_000}}, timeout=0.5)


# Lines arrive in the event loop's own callback (`StdoutMessages` as the pipe's protocol), on either loop.

_ASYNCIO: dict[str, bool] = {}
_LOOPS = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("asyncio", _ASYNCIO), id="asyncio"), pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")],
)


@_LOOPS
async def test_an_answer_written_behind_a_log_entry_reaches_its_request_only_after_the_session_took_the_entry() -> None:
    # The upstream writes the entry and the answer in one write. Were the answer handed over as it is split off,
    # the request would be answered before the session had even seen the entry, so the client would get the
    # result first and the entry after it (or never).
    script = 'ANSWER = lambda request: {"jsonrpc": "2.0", "id": request["id"], "result": {}}\n' + textwrap.dedent(
        _ANSWERING
    )
    events: list[str] = []
    async with _child(script) as (read_stream, write_stream), anyio.create_task_group() as tg:
        direct = DirectRequests(write_stream)
        observed = SessionReadStream(read_stream, lambda: None, direct)

        async def read() -> None:
            with suppress(anyio.EndOfStream, anyio.ClosedResourceError):
                while True:
                    message = _message(await observed.receive())
                    assert isinstance(message, types.JSONRPCNotification)
                    events.append(message.method)

        tg.start_soon(read)
        for _ in range(20):
            assert await direct.request("ping", None, timeout=10) == {}
            events.append("answer")
        tg.cancel_scope.cancel()
    assert events == ["notifications/message", "answer"] * 20


_FLOODING = """
    import json, os, sys
    out = sys.stdout
    out.write(json.dumps({"jsonrpc": "2.0", "method": "pid", "params": {"pid": os.getpid()}}) + "\\n")
    for index in range(3000):
        entry = {"level": "info", "data": {"index": index, "padding": "x" * 1000}}
        out.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": entry}) + "\\n")
    out.flush()
"""
"""3 MB of log entries, against the 1 MiB the proxy holds unread, after a line with the upstream's pid."""


async def _blocked_writing(read_stream: ReadStream[SessionMessage | Exception]) -> int:
    """The flooding upstream's pid, once it is blocked writing to its stdout."""
    announced = _message(await read_stream.receive())
    assert isinstance(announced, types.JSONRPCNotification)
    assert announced.params is not None
    pid: int = announced.params["pid"]
    wchan = Path(f"/proc/{pid}/wchan")
    await wait_until(lambda: "pipe_write" in wchan.read_text(), what="the upstream to block writing its stdout")
    return pid


@_LOOPS
async def test_an_upstream_writing_faster_than_its_session_reads_is_held_at_its_pipe_and_loses_no_line() -> None:
    # The upstream must block writing, not the proxy's memory grow with it; once the session reads, every line
    # arrives, in order.
    async with _child(_FLOODING) as (read_stream, _):
        await _blocked_writing(read_stream)
        indexes: list[int] = []
        with pytest.raises(anyio.EndOfStream):  # noqa: PT012
            while True:
                entry = _message(await read_stream.receive())
                assert isinstance(entry, types.JSONRPCNotification)
                assert entry.params is not None
                indexes.append(entry.params["data"]["index"])
    assert indexes == list(range(3000))


@_LOOPS
async def test_leaving_while_the_upstream_is_blocked_writing_to_its_stdout_stops_it() -> None:
    async with _child(_FLOODING) as (read_stream, _):
        pid = await _blocked_writing(read_stream)
    assert not is_alive(pid)
