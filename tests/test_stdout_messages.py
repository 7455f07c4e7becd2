"""An upstream's stdout as the session reads it (`stdio_pipes.StdoutMessages`), in memory: fed the chunks a pipe
would give, pulled from a stream or pushed as the pipe's protocol."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream
from mcp import types
from mcp.shared.message import SessionMessage

from mcpstore_proxy.stdio_pipes import StdoutMessages

pytestmark = pytest.mark.anyio


def _message(item: SessionMessage | Exception) -> types.JSONRPCMessage:
    assert isinstance(item, SessionMessage), item
    return item.message


class _Chunks(ByteReceiveStream):
    """A pipe's read end in memory, giving exactly the chunks it was given, then the end of the stream."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._chunks:
            raise anyio.EndOfStream
        return self._chunks.pop(0)

    async def aclose(self) -> None:
        self._chunks.clear()


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param(
            (b'{"jsonrpc":"2.0","id":1,"result":{}}\n', b"\n", b"  \r\n", b'{"jsonrpc":"2.0","id":2,"result":{}}\n'),
            id="a line a chunk",
        ),
        pytest.param(
            (b'{"jsonrpc":"2.0","id":1,"result":{}}\n\n  \r\n{"jsonrpc":"2.0","id":2,"result":{}}\n',), id="one chunk"
        ),
        pytest.param(
            (b'{"jsonrpc":"2.0","id":1,"res', b'ult":{}}\n\n', b'{"jsonrpc":"2.0","id":2,"result":{}}\n'),
            id="split lines",
        ),
    ],
)
async def test_every_whole_line_is_a_message_however_the_pipe_cuts_them_and_blank_lines_are_skipped(
    chunks: tuple[bytes, ...],
) -> None:
    stdout = StdoutMessages(_Chunks(*chunks))

    first, second = _message(await stdout.receive()), _message(await stdout.receive())

    assert first == types.JSONRPCResponse(jsonrpc="2.0", id=1, result={})
    assert second == types.JSONRPCResponse(jsonrpc="2.0", id=2, result={})
    with pytest.raises(anyio.EndOfStream):
        await stdout.receive()


class _Pipe(asyncio.ReadTransport):
    """The read end of a pipe as the loop would give it to its protocol: whether it is being read."""

    def __init__(self) -> None:
        super().__init__()
        self.is_paused = False

    def pause_reading(self) -> None:
        self.is_paused = True

    def resume_reading(self) -> None:
        self.is_paused = False

    def is_closing(self) -> bool:
        return False


async def test_the_pipe_is_no_longer_read_past_a_mebibyte_waiting_and_is_read_again_once_the_session_catches_up() -> (
    None
):
    pipe, stdout = _Pipe(), StdoutMessages(None)
    stdout.connection_made(pipe)
    line = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"%s"}}\n'
    chunk = b"".join(line % (b"%04d" % index + b"x" * 996) for index in range(64))  # 64 lines of about 1 KB

    chunks = 0
    while (chunks + 1) * len(chunk) <= 1024 * 1024:  # up to a mebibyte waiting: still read
        stdout.data_received(chunk)
        chunks += 1
        assert not pipe.is_paused
    stdout.data_received(chunk)
    assert pipe.is_paused

    seen = [await stdout.receive() for _ in range((chunks + 1) * 64)]
    assert not pipe.is_paused
    data = [_message(item).model_dump()["params"]["data"] for item in seen]
    assert [int(text[:4]) for text in data] == list(range(64)) * (chunks + 1)


class _Answers:
    """The proxy's own requests, as `StdoutMessages` offers them lines: every answer to an `mcpstore-` id is theirs,
    noted in `events` as it is handed over."""

    def __init__(self, events: list[str]) -> None:
        self._events = events

    def take_raw(self, message: dict[str, Any]) -> bool:
        request_id = message.get("id")
        if "method" in message or not isinstance(request_id, str) or not request_id.startswith("mcpstore-"):
            return False
        self._events.append(request_id)
        return True


async def test_however_the_pipe_cuts_the_stream_each_answer_reaches_its_request_and_the_rest_the_session_in_order() -> (
    None
):
    shuffled = random.Random(11)
    for _ in range(200):
        messages: list[dict[str, Any]] = []
        for index in range(shuffled.randint(1, 20)):
            if shuffled.random() < 0.5:
                result = {"text": "x" * shuffled.randint(0, 3000)}
                messages.append({"jsonrpc": "2.0", "id": f"mcpstore-{index}", "result": result})
            else:
                entry = {"level": "info", "data": index}
                messages.append({"jsonrpc": "2.0", "method": "notifications/message", "params": entry})
        lines = [json.dumps(message).encode() + shuffled.choice((b"\n", b"\n\n  \r\n")) for message in messages]
        data = b"".join(lines)
        ends = list(itertools.accumulate(len(line) for line in lines))
        events: list[str] = []  # what the session took and what requests were handed, as it happened
        stdout = StdoutMessages(None)
        stdout.offer_answers_to(_Answers(events))
        stdout.connection_made(_Pipe())
        seen = 0
        fed = 0
        while fed < len(data):
            cut = min(len(data), fed + shuffled.randint(1, 5000))
            stdout.data_received(data[fed:cut])
            fed = cut
            whole = sum(1 for end, message in zip(ends, messages, strict=True) if end <= fed and "method" in message)
            while seen < whole and shuffled.random() < 0.7:  # the session reads some of what came, or not
                events.append(str(_message(await stdout.receive()).model_dump()["params"]["data"]))
                seen += 1
        stdout.eof_received()
        with pytest.raises(anyio.EndOfStream):  # noqa: PT012
            while True:
                events.append(str(_message(await stdout.receive()).model_dump()["params"]["data"]))
        # An answer never overtakes a line before it that the session has yet to take.
        assert events == [message.get("id") or str(message["params"]["data"]) for message in messages]
