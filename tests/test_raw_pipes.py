"""A pipe's ends driven by the event loop's readiness callbacks (`raw_pipes`), on real OS pipes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator
from contextlib import contextmanager

import anyio
import pytest

from mcpstore_proxy.raw_pipes import ReadPipe, WritePipe

pytestmark = pytest.mark.anyio

_MORE_THAN_A_PIPE = 1024 * 1024
"""More than any pipe's kernel buffer holds (64 KiB on Linux by default)."""


class _Collected(asyncio.Protocol):
    """A protocol that keeps what it is given."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: list[Exception | None] = []
        self.arrived = anyio.Event()

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)
        self.arrived.set()

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.arrived.set()

    async def until(self, size: int) -> None:
        with anyio.fail_after(5):
            while len(self.data) < size and not self.lost:
                self.arrived = anyio.Event()
                await self.arrived.wait()


class _Pipe:
    """An OS pipe whose ends the test closes at its end, but for those it handed over (`take`)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.owned = {self.read_fd, self.write_fd}
        """The ends still the test's to close."""

    def take(self, fd: int) -> int:
        self.owned.discard(fd)
        return fd

    def close(self, fd: int) -> None:
        self.owned.discard(fd)
        os.close(fd)


@contextmanager
def _pipe() -> Generator[_Pipe]:
    pipe = _Pipe()
    try:
        yield pipe
    finally:
        for fd in list(pipe.owned):
            os.close(fd)


async def test_a_read_pipe_hands_over_what_arrives_then_the_end_and_stops_reading() -> None:
    with _pipe() as fds:
        collected = _Collected()
        pipe = ReadPipe(asyncio.get_running_loop(), fds.take(fds.read_fd), collected)
        os.write(fds.write_fd, b"first line\n")
        await collected.until(11)
        fds.close(fds.write_fd)
        await collected.until(10**9)
        assert bytes(collected.data) == b"first line\n"
        assert collected.eof
        assert collected.lost == [None]
        assert pipe.is_closing()
        assert not pipe.is_reading()


async def test_a_paused_read_pipe_takes_nothing_until_resumed() -> None:
    with _pipe() as fds:
        collected = _Collected()
        pipe = ReadPipe(asyncio.get_running_loop(), fds.take(fds.read_fd), collected)
        pipe.pause_reading()
        assert not pipe.is_reading()
        os.write(fds.write_fd, b"waiting")
        for _ in range(5):  # some trips round the loop: a watched descriptor would have been read by now
            await asyncio.sleep(0)
        assert collected.data == b""
        pipe.resume_reading()
        await collected.until(7)
        assert bytes(collected.data) == b"waiting"
        pipe.close()
        assert pipe.is_closing()
        assert collected.lost == [None]


async def test_a_write_the_pipe_cannot_take_at_once_is_kept_and_written_as_the_reader_reads() -> None:
    loop = asyncio.get_running_loop()
    with _pipe() as fds:
        collected = _Collected()
        writer = WritePipe(loop, fds.take(fds.write_fd))
        writer.write(b"small")
        assert writer.get_write_buffer_size() == 0  # the pipe took it whole
        data = bytes(range(256)) * (_MORE_THAN_A_PIPE // 256)
        writer.write(data)
        assert writer.get_write_buffer_size() > 0
        draining = loop.create_task(writer.drain())
        await asyncio.sleep(0)
        assert not draining.done()  # more than 64 KiB wait, and nobody reads
        ReadPipe(loop, fds.take(fds.read_fd), collected)
        with anyio.fail_after(5):
            await draining
        assert writer.get_write_buffer_size() <= 16 * 1024
        writer.close()
        await collected.until(5 + len(data) + 1)
        assert bytes(collected.data) == b"small" + data
        assert collected.eof  # the close waited for what was kept, then the reader read the end


async def test_a_pipe_whose_reader_is_gone_is_broken_for_a_write_and_for_a_drain_waiting() -> None:
    loop = asyncio.get_running_loop()
    with _pipe() as fds:
        writer = WritePipe(loop, fds.take(fds.write_fd))
        writer.write(b"x" * _MORE_THAN_A_PIPE)
        draining = loop.create_task(writer.drain())
        await asyncio.sleep(0)
        fds.close(fds.read_fd)
        with anyio.fail_after(5), pytest.raises(BrokenPipeError):
            await draining
        with pytest.raises(BrokenPipeError):
            writer.write(b"more")
        assert writer.is_closing()


async def test_a_closed_write_pipe_refuses_a_write_and_its_reader_reads_the_end() -> None:
    loop = asyncio.get_running_loop()
    with _pipe() as fds:
        writer = WritePipe(loop, fds.take(fds.write_fd))
        writer.close()
        with pytest.raises(RuntimeError, match="closed"):
            writer.write(b"late")
        assert os.read(fds.read_fd, 10) == b""
