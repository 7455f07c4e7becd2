"""A stdio upstream's process, started without stopping the event loop for long.

uvloop starts a subprocess with `fork()`: the child gets a copy of the page tables of the whole proxy (75 MiB and
more), and the event loop, every client's calls included, waits meanwhile: 15 to 20 ms per start on a 2-core
cloud machine, at every new session and every warm spare. Python's `subprocess` starts one with `vfork()` (or
`posix_spawn`), which copies nothing: about 0.5 ms. So the process is started by `subprocess.Popen`, and its
pipes are driven by the event loop's readiness callbacks on their descriptors (`raw_pipes`), as an
`anyio.abc.Process`.

Its exit is seen by `returncode`, which asks the kernel (`Popen.poll()`, reaping it): the SDK's stop code polls
exactly that (it does not use `wait()`, which on asyncio also waits for the pipes' end), and a live upstream is
otherwise noticed by its stdout's end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Final, TextIO, cast

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from mcpstore_proxy.raw_pipes import ReadPipe, WritePipe

__all__ = ["Arrival", "PipeReader", "PipeWriter", "ReadAhead", "UpstreamProcess", "start_process"]

_EXIT_POLL_SECONDS: Final = 0.05
"""How often `wait()` asks whether the process has exited (nothing in the proxy waits on it that way)."""
_READ_AHEAD_BYTES: Final = 256 * 1024
"""How much of stdout `PipeReader` holds unread before it stops reading the pipe (and the process blocks)."""
_REAP_SECONDS: Final = 2.0
"""How long a process killed because its pipes could not be connected is waited for, to reap it."""


class PipeWriter(ByteSendStream):
    """The process's stdin, as an anyio stream over `writer` (which the proxy writes to itself)."""

    __slots__ = ("_is_closed", "writer")

    def __init__(self, writer: WritePipe) -> None:
        self.writer = writer
        self._is_closed = False

    async def send(self, item: bytes) -> None:
        if self._is_closed:
            raise anyio.ClosedResourceError
        try:
            self.writer.write(item)
            await self.writer.drain()
        except (OSError, RuntimeError) as error:  # RuntimeError: a write to a closed pipe
            raise anyio.BrokenResourceError from error

    async def aclose(self) -> None:
        self._is_closed = True
        self.writer.close()  # the child reads the end of its stdin


class Arrival:
    """Wakes the one task waiting for more of a pipe's data: a future made only while it waits."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def arrived(self) -> asyncio.Future[None]:
        """What the waiting task awaits: done when more arrives. A future, not a coroutine: a reader idle for an
        upstream session's whole life waits with no frame of this class's."""
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        return waiter

    def wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():  # a cancelled wait's is done
            waiter.set_result(None)


class ReadAhead:
    """How much of a pipe is held unread: past `limit` bytes the pipe is no longer read (its writer blocks), until
    what is taken brings it back to `limit`."""

    __slots__ = ("_is_paused", "_limit", "_size", "transport")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._is_paused = False
        self.transport: asyncio.ReadTransport | None = None
        """The pipe, once connected."""

    def added(self, size: int) -> None:
        self._size += size
        if self._size > self._limit and not self._is_paused and self.transport is not None:
            self._is_paused = True
            self.transport.pause_reading()

    def taken(self, size: int) -> None:
        self._size -= size
        if self._is_paused and self._size <= self._limit:
            self._resume()

    def released(self) -> None:
        """Nothing is held any more (dropped, or handed on)."""
        self._size = 0
        if self._is_paused:
            self._resume()

    def _resume(self) -> None:
        self._is_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class PipeReader(ByteReceiveStream, asyncio.Protocol):
    """The process's stdout, as the event loop's protocol for its pipe: an anyio stream of the chunks it delivers,
    until `deliver_to` makes another protocol the pipe's (the session's `stdio_pipes.StdoutMessages`), which then
    gets each chunk in the loop's own callback, with no task, future or buffer in between."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._read_ahead = ReadAhead(_READ_AHEAD_BYTES)
        self._arrival = Arrival()
        self._has_ended = False
        self._is_closed = False

    def deliver_to(self, target: asyncio.Protocol) -> None:
        """Make `target` the pipe's protocol (`connection_made` first, with the pipe's transport, which it may
        pause), given first what was not read yet; `receive` is not used after this. The loop calls `target`
        itself from then on, and `aclose` still closes the pipe (`target` hears of it)."""
        transport = self._read_ahead.transport
        assert transport is not None  # connected in `start_process`
        transport.set_protocol(target)
        target.connection_made(transport)
        chunks, self._chunks = self._chunks, []
        for chunk in chunks:
            target.data_received(chunk)
        self._read_ahead.released()
        if self._has_ended:
            target.eof_received()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._read_ahead.transport = cast("asyncio.ReadTransport", transport)  # a `ReadPipe`

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._read_ahead.added(len(data))
        self._arrival.wake()

    def eof_received(self) -> bool | None:
        self._has_ended = True
        self._arrival.wake()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._has_ended = True
        self._arrival.wake()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._chunks:
            if self._is_closed:
                raise anyio.ClosedResourceError
            if self._has_ended:
                raise anyio.EndOfStream
            await self._arrival.arrived()
        chunk = self._chunks[0]
        if len(chunk) > max_bytes:
            self._chunks[0], chunk = chunk[max_bytes:], chunk[:max_bytes]
        else:
            del self._chunks[0]
        self._read_ahead.taken(len(chunk))
        return chunk

    async def aclose(self) -> None:
        self._is_closed = True
        if self._read_ahead.transport is not None:
            self._read_ahead.transport.close()  # a reader waiting now gets the end of the stream
        self._arrival.wake()


class UpstreamProcess(Process):
    """A process `start_process` started, with pipes for its stdin and stdout."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: PipeWriter, stdout: PipeReader) -> None:
        self._popen = popen
        self._stdin = stdin
        self._stdout = stdout

    def __repr__(self) -> str:
        return f"<UpstreamProcess {self.pid} returncode={self._popen.returncode}>"

    async def aclose(self) -> None:
        """Close its pipes and wait for it to exit (the proxy stops an upstream with `compat.stop_stdio_server`)."""
        await self._stdin.aclose()
        await self._stdout.aclose()
        await self.wait()

    async def wait(self) -> int:
        return await _exit_code(self._popen)

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    def send_signal(self, signal: int) -> None:
        self._popen.send_signal(signal)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    @property
    def stdin(self) -> PipeWriter:
        return self._stdin

    @property
    def stdout(self) -> PipeReader:
        return self._stdout

    @property
    def stderr(self) -> None:
        return None


async def start_process(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str | Path | None, stderr: TextIO
) -> UpstreamProcess:
    """Start `argv` leading a process group of its own (as the SDK's `stdio_client` starts a server), with pipes
    for its stdin and stdout and `stderr` as its stderr.

    Raises:
        OSError: it could not be started (no such command, not executable, no such `cwd`).
    """
    loop = asyncio.get_running_loop()
    popen = subprocess.Popen(  # noqa: ASYNC220  # vfork: returns in about 0.5 ms, where the loop's own fork takes 20
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=dict(env),
        cwd=cwd,
        bufsize=0,
        start_new_session=True,
        close_fds=True,
    )
    assert popen.stdin is not None  # spawned with pipes
    assert popen.stdout is not None
    try:
        stdin, stdout = _connected(loop, popen.stdin, popen.stdout)
    except Exception:  # the loop refused a pipe: leave no process behind
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        for pipe in (popen.stdin, popen.stdout):
            with suppress(OSError):  # already closed, if its descriptor was taken
                pipe.close()
        with anyio.move_on_after(_REAP_SECONDS, shield=True):
            await _exit_code(popen)
        raise
    # Nothing awaited since the start: the caller has the process before any cancellation reaches it.
    return UpstreamProcess(popen, stdin, stdout)


def _connected(loop: asyncio.AbstractEventLoop, stdin: IO[bytes], stdout: IO[bytes]) -> tuple[PipeWriter, PipeReader]:
    """The pipes as the loop drives them (see `raw_pipes`), on descriptors of their own: `Popen`'s file objects
    are closed at once, so that nothing else ever closes those descriptors."""
    stdin_fd = os.dup(stdin.fileno())
    try:
        stdout_fd = os.dup(stdout.fileno())
    except OSError:
        os.close(stdin_fd)
        raise
    stdin.close()
    stdout.close()
    try:
        writer = WritePipe(loop, stdin_fd)
        reader = PipeReader()
        ReadPipe(loop, stdout_fd, reader)
    except BaseException:
        for fd in (stdin_fd, stdout_fd):
            with suppress(OSError):
                os.close(fd)
        raise
    return PipeWriter(writer), reader


async def _exit_code(popen: subprocess.Popen[bytes]) -> int:
    """Wait for the process to exit (reaping it), and its exit code."""
    while (code := popen.poll()) is None:  # noqa: ASYNC110  # the kernel is asked: no event is set at a child's exit
        await anyio.sleep(_EXIT_POLL_SECONDS)
    return code
