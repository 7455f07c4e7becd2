"""The stdio transport for the one downstream client of `mcpstore-proxy stdio`: newline-delimited JSON-RPC on
fd 0 (in) and fd 1 (out).

The SDK's `stdio_server` reads stdin on a worker thread, which cancellation
cannot interrupt: a SIGTERM while the client keeps stdin open would wait
forever for its next line. This transport reads and writes the descriptors
without blocking, waiting for them on the event loop, so EOF, a signal or a
cancellation ends it at once. The descriptors' blocking mode is restored on
the way out.

A line the stdio lane takes (see `lane_messages`) is never parsed for the SDK; its
answers go out through the same writer as the SDK's messages, one at a time.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, Protocol, cast

import anyio
from mcp import types
from mcp.shared.message import SessionMessage

from mcpstore_proxy.compat import TransportStreams, WriteStream

__all__ = ["LineTaker", "stdio_streams"]

_CHUNK_BYTES: Final = 65536
_FLUSH_SECONDS: Final = 2.0


class LineTaker(Protocol):
    """What may serve a line itself before the SDK sees it (see `lane_messages`)."""

    def take(self, line: bytes, reply: Callable[[bytes], Awaitable[None]]) -> bool:
        """Serve the message on `line`, answering with `reply` (a message in JSON, without the line's end); False
        leaves it to the SDK."""
        ...


@asynccontextmanager
async def stdio_streams(
    stdin: int = 0, stdout: int = 1, *, lane: LineTaker | None = None
) -> AsyncGenerator[TransportStreams]:
    """The client's messages from `stdin` (but for those `lane` takes), and a stream whose messages go to
    `stdout` (and the lane's, in the order sent), until EOF or the end of the block."""
    incoming_writer, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, outgoing_reader = anyio.create_memory_object_stream[SessionMessage | bytes](0)
    was_blocking = os.get_blocking(stdin), os.get_blocking(stdout)
    os.set_blocking(stdin, False)
    os.set_blocking(stdout, False)

    async def read() -> None:
        pending: list[bytes] = []  # a line's start: its pieces joined once, however many reads a long line takes
        async with incoming_writer:
            while True:
                await anyio.wait_readable(stdin)
                try:
                    chunk = os.read(stdin, _CHUNK_BYTES)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    return  # EOF: the client is gone
                if b"\n" not in chunk:
                    pending.append(chunk)
                    continue
                *lines, rest = chunk.split(b"\n")
                if pending:
                    pending.append(lines[0])
                    lines[0] = b"".join(pending)
                pending = [rest] if rest else []
                for line in lines:
                    if not line.strip():
                        continue
                    if lane is not None and lane.take(line, outgoing.send):
                        continue
                    await incoming_writer.send(_parse(line))

    async def write() -> None:
        nonlocal idle
        is_open = True
        async with outgoing_reader:
            async for message in outgoing_reader:
                idle = anyio.Event()
                if isinstance(message, bytes):
                    data = message + b"\n"  # the lane's, already in JSON
                else:
                    data = (message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode()
                # Once the client closed its end, what is left to say has no reader.
                is_open = is_open and await _written(stdout, data)
                idle.set()

    idle = anyio.Event()
    idle.set()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            tg.start_soon(write)
            try:
                yield incoming, cast("WriteStream[SessionMessage]", outgoing)  # the SDK sends it only SessionMessages
            finally:
                # A message half written would garble the wire: let it finish (briefly), then stop.
                with anyio.move_on_after(_FLUSH_SECONDS, shield=True):
                    await idle.wait()
                tg.cancel_scope.cancel()
    finally:
        os.set_blocking(stdin, was_blocking[0])
        os.set_blocking(stdout, was_blocking[1])


async def _written(fd: int, data: bytes) -> bool:
    """Write all of `data`, waiting for the pipe only when it is full (a view: a long message is not copied for
    each part written); False if the reader closed its end."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await anyio.wait_writable(fd)
        except OSError:
            return False
    return True


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as error:
        return error  # the session answers a parse error; the stream goes on
