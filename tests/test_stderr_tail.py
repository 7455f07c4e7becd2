"""An upstream's stderr, read into a `StderrTail` by the event loop while its process runs (no task of its own)."""

from __future__ import annotations

import os

import anyio
import pytest

from mcpstore_proxy.transports import StderrTail

pytestmark = pytest.mark.anyio


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_lines_are_kept_as_written_the_last_unfinished_one_too_and_the_pipe_is_closed_after() -> None:
    tail = StderrTail("up", max_lines=3)
    read_fd, write_fd = os.pipe()
    async with tail.reading(read_fd):
        os.write(write_fd, b"zero\nfirst\nsec")
        os.write(write_fd, b"ond\n\nthird without an end")
        os.close(write_fd)
    assert tail.summary() == "first | second | third without an end"
    assert not _is_open(read_fd)


async def test_leaving_waits_only_a_moment_for_a_writer_that_never_closes_its_end() -> None:
    # A grandchild that inherited the upstream's stderr keeps the pipe open after the upstream is gone.
    tail = StderrTail("up")
    read_fd, write_fd = os.pipe()
    try:
        with anyio.fail_after(5):
            async with tail.reading(read_fd, grace_seconds=0.01):
                os.write(write_fd, b"still here\n")
        assert tail.summary() == "still here"
        assert not _is_open(read_fd)
    finally:
        os.close(write_fd)
