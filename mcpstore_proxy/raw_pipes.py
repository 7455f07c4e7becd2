"""A child process's pipe ends driven by the event loop's readiness callbacks on their file descriptors, rather
than by the loop's pipe transports.

uvloop's pipe transport (`connect_read_pipe`, `connect_write_pipe`) keeps about 1 KiB of Python objects per pipe,
and a stdio upstream session has two for its whole life. `ReadPipe` reads its descriptor when the loop says it is
readable and hands each chunk to its protocol, as the transport would (`data_received`, then `eof_received` and
`connection_lost` at the end), and stops reading while paused. `WritePipe` writes at once where the pipe takes the
data and keeps the rest until the loop says the pipe is writable again; its `drain` waits, as a stream writer's
does, while more than 64 KiB wait to be written. Neither keeps more than a few slots while idle, and the loop
watches a descriptor only while there is something to do: always for the reader, only while data waits for the
writer.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final, Protocol, cast

__all__ = ["PipeWriting", "ReadPipe", "WritePipe"]

_CHUNK_BYTES: Final = 256 * 1024
_HIGH_WATER: Final = 64 * 1024
"""Past this many bytes waiting, `drain` waits (asyncio's default for a stream writer)."""
_LOW_WATER: Final = 16 * 1024
"""...until no more than this many wait."""


class PipeWriting(Protocol):
    """What the proxy writes a process's stdin through: a `WritePipe`, or where the SDK started the process (not on
    POSIX), asyncio's `StreamWriter`."""

    @property
    def transport(self) -> _Buffer: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class _Buffer(Protocol):
    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


class ReadPipe(asyncio.ReadTransport):
    """The read end `fd` of a pipe, delivering to `protocol` (which may be replaced: `set_protocol`)."""

    __slots__ = ("_fd", "_is_closing", "_is_reading", "_loop", "_protocol")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._fd = fd
        self._protocol = protocol
        self._is_closing = False
        self._is_reading = False
        os.set_blocking(fd, False)
        protocol.connection_made(self)
        self.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = cast(asyncio.Protocol, protocol)  # a pipe's: chunks and their end

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_reading(self) -> bool:
        return self._is_reading

    def pause_reading(self) -> None:
        if self._is_reading:
            self._is_reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._is_reading and not self._is_closing:
            self._is_reading = True
            self._loop.add_reader(self._fd, self._readable)

    def is_closing(self) -> bool:
        return self._is_closing

    def close(self) -> None:
        """Stop reading and close the descriptor; the protocol hears `connection_lost`."""
        if not self._is_closing:
            self._end(None)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, _CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._end(error)
            return
        if not chunk:
            self._protocol.eof_received()
            self._end(None)
            return
        self._protocol.data_received(chunk)

    def _end(self, error: Exception | None) -> None:
        self.pause_reading()
        self._is_closing = True
        os.close(self._fd)
        self._protocol.connection_lost(error)


class WritePipe:
    """The write end `fd` of a pipe: what `asyncio.StreamWriter` offers a writer to a pipe, and what its transport
    says of its buffer (`transport` is the pipe itself)."""

    __slots__ = ("_buffer", "_drained", "_error", "_fd", "_is_closed", "_is_closing", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._buffer: bytearray | None = None
        """What the pipe did not take yet (made when it first does not)."""
        self._drained: list[asyncio.Future[None]] | None = None
        """Who waits in `drain` (made when someone does)."""
        self._error: OSError | None = None
        self._is_closing = False
        """Asked to close (the descriptor closes once nothing waits to be written)."""
        self._is_closed = False
        os.set_blocking(fd, False)

    @property
    def transport(self) -> WritePipe:
        return self

    def get_write_buffer_size(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0

    def is_closing(self) -> bool:
        return self._is_closing

    def write(self, data: bytes) -> None:
        """Write `data`, or keep what the pipe does not take now.

        Raises:
            OSError: the pipe is broken (its reader is gone).
            RuntimeError: the pipe was closed.
        """
        if self._buffer or self._is_closing:  # both rare: one test for the usual case
            if self._error is not None:
                raise self._error
            if self._is_closing:
                raise RuntimeError("the pipe is closed")
            assert self._buffer is not None
            self._buffer.extend(data)
            return
        try:
            written = os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as error:
            self._broke(error)
            raise
        if written < len(data):
            self._buffer = bytearray(data[written:])
            self._loop.add_writer(self._fd, self._writable)

    async def drain(self) -> None:
        """Wait while more than 64 KiB wait to be written (until no more than 16 KiB do).

        Raises:
            OSError: the pipe broke.
        """
        if self._error is not None:
            raise self._error
        if self.get_write_buffer_size() <= _HIGH_WATER:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self._drained is None:
            self._drained = []
        self._drained.append(waiter)
        await waiter

    def close(self) -> None:
        """Close the pipe once what waits has been written (its reader then reads the end)."""
        if self._is_closing:
            return
        self._is_closing = True
        if not self._buffer:
            self._close_now()

    def _writable(self) -> None:
        buffer = self._buffer
        assert buffer  # watched only while something waits
        try:
            written = os.write(self._fd, buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._broke(error)
            return
        del buffer[:written]
        if len(buffer) <= _LOW_WATER:
            self._wake(None)
        if not buffer:
            self._buffer = None
            self._loop.remove_writer(self._fd)
            if self._is_closing:
                self._close_now()

    def _broke(self, error: OSError) -> None:
        self._error = error
        if self._buffer is not None:
            self._buffer = None
            self._loop.remove_writer(self._fd)
        self._is_closing = True
        self._close_now()

    def _wake(self, error: OSError | None) -> None:
        waiters, self._drained = self._drained, None
        for waiter in waiters or ():
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def _close_now(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        if self._buffer is not None:
            self._buffer = None
            self._loop.remove_writer(self._fd)
        self._wake(self._error)
        os.close(self._fd)
