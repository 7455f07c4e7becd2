"""A stdio upstream's pipes as the session's read and write streams, with no task between them.

The SDK's `stdio_client` runs a reader and a writer task that pass each message
through a memory stream: two task switches per message, four per forwarded
call. Here the session's receive loop reads the upstream's stdout itself, one
line per message, and a sender writes each message to its stdin at once. The
process is still spawned and stopped by the SDK's own code (a process group of
its own; close stdin, wait, then kill the tree), reached through `compat`.

The proxy's own requests (`direct_requests`) skip the SDK's models both ways:
`send_json` writes a message as orjson encodes it, and each line read is parsed
once (`json_bytes.from_json`, as the SDK's models parse) and offered to
`RawAnswers` first, so an answer to one of them reaches its caller as the
upstream wrote it, never validated. Every other line is validated into the
SDK's message types from that parse, as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any, Final, Protocol, cast

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from mcp import types
from mcp.client.stdio import StdioServerParameters
from mcp.shared.message import SessionMessage

from mcpstore_proxy.compat import TransportStreams, spawn_stdio_server, stdin_writer, stop_stdio_server
from mcpstore_proxy.json_bytes import from_json, to_json
from mcpstore_proxy.message_streams import MessageReadStream, MessageWriteStream
from mcpstore_proxy.raw_pipes import PipeWriting
from mcpstore_proxy.upstream_process import Arrival, PipeReader, ReadAhead

__all__ = ["RawAnswers", "StdinMessages", "StdioPipes", "StdoutMessages"]

logger = logging.getLogger(__name__)

_READ_AHEAD_BYTES: Final = 1024 * 1024
"""How much of an upstream's stdout waits for the session's reader before the pipe is no longer read (and the
upstream blocks writing): its notifications, when the session falls behind."""


class RawAnswers(Protocol):
    def take_raw(self, message: dict[str, Any]) -> bool:
        """Whether `message`, a line as parsed from JSON, answers one of the proxy's own requests (and was
        handed to it)."""
        ...


class StdoutMessages(MessageReadStream, asyncio.Protocol):
    """The messages an upstream writes to stdout, one JSON-RPC message per line, parsed as they are taken.

    Fed either way: pushed, as the protocol the pipe's chunks are delivered to (`upstream_process.PipeReader`'s
    `deliver_to`), so that a line arrives in the event loop's own callback; or pulled, read from `stdout` by
    `receive` when it has no line left. Either way an answer to one of the proxy's own requests (`RawAnswers`) is
    handed over as soon as its line is split off, when no line before it is still waiting for the session's
    reader: no task is woken to read it. A line behind others waits its turn, so that the session has seen (and
    started forwarding) whatever the upstream wrote before an answer, such as a call's progress, by the time the
    answer is handed over.
    """

    __slots__ = (
        "_answers",
        "_arrival",
        "_has_ended",
        "_is_closed",
        "_next",
        "_partial",
        "_read_ahead",
        "_stdout",
        "_waiting",
    )

    def __init__(self, stdout: ByteReceiveStream | None) -> None:
        self._stdout = stdout
        """Where `receive` reads chunks from; None once they are pushed (`connection_made`)."""
        self._waiting: list[object] = []
        """The lines the session's reader has yet to take, from `_next` on, in order: each a line as read (bytes),
        or as parsed already (any other type: JSON never parses to bytes) where `_answers` did not take it. A
        list, not a `deque`: an empty one is 0.6 KiB, for every idle session; emptied once every line is taken."""
        self._next = 0
        self._read_ahead = ReadAhead(_READ_AHEAD_BYTES)
        """The bytes of the lines kept as read (when pushed, the pipe is no longer read past the limit)."""
        self._partial = bytearray()
        self._arrival = Arrival()
        self._has_ended = False
        self._is_closed = False
        self._answers: RawAnswers | None = None

    def offer_answers_to(self, answers: RawAnswers) -> None:
        """Offer each line to `answers` before the SDK's models parse it."""
        self._answers = answers

    async def receive(self) -> SessionMessage | Exception:
        """The next message, or the error that parsing a line raised (the session reports it and goes on).

        Raises:
            anyio.EndOfStream: the upstream closed its stdout (it exited).
            anyio.ClosedResourceError: the session closed this stream.
        """
        while True:
            while self._next == len(self._waiting):
                await self._more()  # a future while pushed: the idle reader's frame is this one
            line = self._waiting[self._next]
            self._next += 1
            if self._next == len(self._waiting):
                self._waiting.clear()
                self._next = 0
            if type(line) is bytes:
                self._read_ahead.taken(len(line))
            try:
                if type(line) is not bytes:
                    parsed = line  # parsed as it arrived, and not an answer `_answers` took
                elif self._answers is None:
                    return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
                else:
                    parsed = from_json(line)
                    if type(parsed) is dict and self._answers.take_raw(parsed):  # pyright: ignore[reportUnknownArgumentType]
                        continue
                return SessionMessage(types.jsonrpc_message_adapter.validate_python(parsed, by_name=False))
            except ValueError as error:
                logger.warning("upstream wrote a line that is not a JSON-RPC message: %s", error)
                return error

    def _more(self) -> Awaitable[None]:
        """What to await for more lines: their arrival when pushed, or reading them when pulled."""
        if self._is_closed:
            raise anyio.ClosedResourceError
        if self._stdout is not None:
            return self._pulled(self._stdout)
        if self._has_ended:
            raise anyio.EndOfStream
        return self._arrival.arrived()

    async def _pulled(self, stdout: ByteReceiveStream) -> None:
        self.data_received(await stdout.receive())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._read_ahead.transport = cast("asyncio.ReadTransport", transport)  # a `ReadPipe`, or uvloop's
        self._stdout = None

    def data_received(self, data: bytes) -> None:
        if self._is_closed:
            return  # no reader any more (or an upstream being stopped: see `discard`)
        end = data.find(b"\n")
        if end < 0:
            self._partial += data  # a long message arrives in many chunks: no copy of what came before
            return
        if end == len(data) - 1 and not self._partial:  # one whole line: most answers
            if not data.isspace():
                self._arrived_line(data)  # its newline too: JSON allows it, and a 1 MB result is not copied
        else:
            first = data[:end]
            if self._partial:
                first = bytes(self._partial) + first
                self._partial.clear()
            lines = data[end + 1 :].split(b"\n")
            self._partial += lines.pop()
            for line in (first, *lines):
                if line.strip():
                    self._arrived_line(line)
        if self._next < len(self._waiting):
            self._arrival.wake()

    def _arrived_line(self, line: bytes) -> None:
        if self._next == len(self._waiting) and self._answers is not None:  # no line before it waiting
            try:
                parsed: object = from_json(line)
            except ValueError:
                pass  # the session's reader reports it, in its turn
            else:
                taken = type(parsed) is dict and self._answers.take_raw(parsed)  # pyright: ignore[reportUnknownArgumentType]
                if not taken:
                    self._waiting.append(parsed)  # pyright: ignore[reportUnknownArgumentType]
                return
        self._waiting.append(line)
        self._read_ahead.added(len(line))

    def eof_received(self) -> bool | None:
        self._ended()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    def _ended(self) -> None:
        self._has_ended = True
        self._arrival.wake()

    def discard(self) -> None:
        """Drop every line waiting and every one to come, and read the pipe on (nobody reads these any more; an
        upstream being stopped that is blocked writing to a full stdout pipe never reads its stdin's end)."""
        self._is_closed = True
        self._ended()
        self._waiting.clear()
        self._next = 0
        self._partial.clear()
        self._read_ahead.released()

    async def aclose(self) -> None:
        self.discard()


class StdinMessages(MessageWriteStream):
    """Writes each message to an upstream's stdin as one line, in the sending task."""

    __slots__ = ("_is_closed", "_stdin", "_writer")

    def __init__(self, stdin: ByteSendStream) -> None:
        self._stdin = stdin
        self._writer = stdin_writer(stdin)
        self._is_closed = False

    async def send(self, item: SessionMessage, /) -> None:
        """Raises anyio.ClosedResourceError once closed, anyio.BrokenResourceError once the upstream is gone."""
        await self._write(item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")

    def send_json(self, message: dict[str, Any], *, deadline: float | None = None) -> Awaitable[None] | None:
        """Send a message the proxy wrote itself, in JSON as it stands: at once, giving None, where the pipe
        takes it whole (the usual case: no coroutine); else what to await until it has (see `send` for what
        either raises).

        Raises:
            TimeoutError: the upstream stopped reading its stdin, and the pipe was still full at `deadline` (the
                event loop's clock).
        """
        data = to_json(message) + b"\n"
        if self._writer is None:
            return self._write(data, deadline)
        return None if self._written_at_once(self._writer, data) else self._drained(self._writer, deadline)

    async def _write(self, data: bytes, deadline: float | None = None) -> None:
        writer = self._writer
        if writer is None:
            if self._is_closed:
                raise anyio.ClosedResourceError
            try:
                with anyio.fail_at(math.inf if deadline is None else deadline):
                    await self._stdin.send(data)
            except TimeoutError:
                raise
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, RuntimeError) as error:
                raise anyio.BrokenResourceError from error
            return
        if not self._written_at_once(writer, data):
            await self._drained(writer, deadline)

    def _written_at_once(self, writer: PipeWriting, data: bytes) -> bool:
        """Put `data` in the pipe; whether it all went, to a pipe still open (what `drain()` would find, without
        its two coroutines). No lock: each message is one write to the pipe's buffer, whole and in order; only
        the wait for the buffer to drain is shared between senders, and asyncio lets several wait at once."""
        if self._is_closed:
            raise anyio.ClosedResourceError
        try:
            writer.write(data)
        except (OSError, RuntimeError) as error:  # RuntimeError: uvloop's write to a closed transport
            raise anyio.BrokenResourceError from error
        transport = writer.transport
        return not transport.get_write_buffer_size() and not transport.is_closing()

    async def _drained(self, writer: PipeWriting, deadline: float | None) -> None:
        try:
            if deadline is None:
                await writer.drain()  # raises once the pipe is gone
                return
            with anyio.fail_at(deadline):
                await writer.drain()
        except TimeoutError:
            raise  # an OSError too, but the upstream is not known to be gone
        except (OSError, RuntimeError) as error:  # the pipe broke: the upstream is gone
            raise anyio.BrokenResourceError from error

    async def aclose(self) -> None:
        self._is_closed = True


class StdioPipes:
    """Entering starts the upstream process with `stderr_fd` as its stderr, and gives its pipes as streams;
    leaving stops it (bounded, even when cancelled). `stderr_fd` is closed once the child has its own copy, or the
    start failed.

    A class, not a generator: it stays entered for the session's whole life, where a generator kept a frame and a
    context manager object (0.7 KiB per session). It keeps what stopping the process needs, no more.
    """

    __slots__ = ("_messages", "_parameters", "_process", "_stderr_fd")

    def __init__(self, parameters: StdioServerParameters, stderr_fd: int) -> None:
        self._parameters: StdioServerParameters | None = parameters
        self._stderr_fd = stderr_fd
        self._process: Process | None = None
        self._messages: StdoutMessages | None = None

    async def __aenter__(self) -> TransportStreams:
        """Raises OSError: the command could not be started."""
        assert self._parameters is not None, "entered once"
        parameters, self._parameters = self._parameters, None
        process = await _spawn(parameters, self._stderr_fd)
        stdout, stdin = process.stdout, process.stdin
        assert stdout is not None  # spawned with pipes
        assert stdin is not None
        messages = StdoutMessages(stdout)
        if isinstance(stdout, PipeReader):
            stdout.deliver_to(messages)  # the loop's callback splits each line off: no task reads them
        self._process, self._messages = process, messages
        return messages, StdinMessages(stdin)

    async def __aexit__(self, *_: object) -> None:
        process, messages = self._process, self._messages
        assert process is not None
        assert messages is not None
        stdout = process.stdout
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:

                async def discard_stdout() -> None:
                    # An upstream blocked writing to a full stdout pipe never reads its stdin's end.
                    with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                        while stdout is not None:
                            await stdout.receive()

                if isinstance(stdout, PipeReader):
                    messages.discard()
                else:
                    tg.start_soon(discard_stdout)
                await stop_stdio_server(process)
                tg.cancel_scope.cancel()


async def _spawn(parameters: StdioServerParameters, stderr_fd: int) -> Process:
    # In a frame of its own: the file object around `stderr_fd` is gone once the child is started, not kept for
    # the session's whole life by the frame that serves it.
    with os.fdopen(stderr_fd, "w") as errlog:
        return await spawn_stdio_server(parameters, errlog)
