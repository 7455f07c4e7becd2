"""The stdio transport for the one downstream client of `mcpstore-proxy stdio`: newline-delimited JSON-RPC on
fd 0 (in) and fd 1 (out).

The SDK's `stdio_server` reads stdin on a worker thread, which cancellation
cannot interrupt: a SIGTERM while the client keeps stdin open would wait
forever for its next line. This transport reads and writes the descriptors
without blocking, waiting for them on the event loop, so EOF, a signal or a
cancellation ends it at once. The descriptors' blocking mode is restored on
the way out.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Final

import anyio
from mcp import types
from mcp.shared.message import SessionMessage

from mcpstore_proxy.compat import TransportStreams

__all__ = ["stdio_streams"]

_CHUNK_BYTES: Final = 65536
_FLUSH_SECONDS: Final = 2.0


@asynccontextmanager
async def stdio_streams(stdin: int = 0, stdout: int = 1) -> AsyncGenerator[TransportStreams]:
    """The client's messages from `stdin`, and a stream whose messages go to `stdout`, until EOF or the end of
    the block."""
    incoming_writer, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, outgoing_reader = anyio.create_memory_object_stream[SessionMessage](0)
    was_blocking = os.get_blocking(stdin), os.get_blocking(stdout)
    os.set_blocking(stdin, False)
    os.set_blocking(stdout, False)

    async def read() -> None:
        pending = b""
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
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        await incoming_writer.send(_parse(line))

    async def write() -> None:
        nonlocal idle
        is_open = True
        async with outgoing_reader:
            async for message in outgoing_reader:
                idle = anyio.Event()
                data = (message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode()
                while data and is_open:
                    await anyio.wait_writable(stdout)
                    try:
                        data = data[os.write(stdout, data) :]
                    except BlockingIOError:
                        continue
                    except OSError:
                        is_open = False  # the client closed its end; what is left to say has no reader
                idle.set()

    idle = anyio.Event()
    idle.set()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            tg.start_soon(write)
            try:
                yield incoming, outgoing
            finally:
                # A message half written would garble the wire: let it finish (briefly), then stop.
                with anyio.move_on_after(_FLUSH_SECONDS, shield=True):
                    await idle.wait()
                tg.cancel_scope.cancel()
    finally:
        os.set_blocking(stdin, was_blocking[0])
        os.set_blocking(stdout, was_blocking[1])


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as error:
        return error  # the session answers a parse error; the stream goes on
