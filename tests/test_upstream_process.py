"""A stdio upstream's process, started by `subprocess` (no `fork()` of the proxy) and driven on the event loop: on
asyncio's loop and on uvloop's, as `serve` runs it."""

from __future__ import annotations

import os
import sys
from contextlib import suppress
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream, ByteSendStream
from mcp.client.stdio import StdioServerParameters

from mcpstore_proxy.compat import stop_stdio_server
from mcpstore_proxy.stdio_pipes import StdioPipes
from mcpstore_proxy.upstream_process import start_process

pytestmark = pytest.mark.anyio


_ASYNCIO: dict[str, bool] = {}
_UVLOOP: dict[str, bool] = {"use_uvloop": True}  # as `serve` runs


@pytest.fixture(
    params=[pytest.param(("asyncio", _ASYNCIO), id="asyncio"), pytest.param(("asyncio", _UVLOOP), id="uvloop")]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param  # type: ignore[no-any-return]


def _children_running(marker: str) -> list[int]:
    """The pids of this process's children whose command line holds `marker` (zombies included)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and marker.encode() in command:
            found.append(int(entry.name))
    return found


async def _all_of(stdout: ByteReceiveStream) -> bytes:
    received = b""
    with suppress(anyio.EndOfStream):
        while True:
            received += await stdout.receive()
    return received


async def _fill(stdin: ByteSendStream) -> None:
    for _ in range(100):  # the first writes may land before the loop sees the pipe broken
        await stdin.send(b"x" * 65536)


async def test_a_process_echoes_through_its_pipes_and_its_end_is_the_end_of_its_stdout(tmp_path: Path) -> None:
    script = "import os, sys; line = sys.stdin.readline(); sys.stdout.write(f'{os.getpgid(0)} {os.getcwd()} ' + line)"
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230  # /dev/null never blocks
        process = await start_process(
            [sys.executable, "-c", script], env={**os.environ, "EXTRA": "kept"}, cwd=tmp_path, stderr=errlog
        )
    try:
        await process.stdin.send(b"hello\n")
        received = await _all_of(process.stdout)
        group, cwd, word = received.decode().split()
        assert (int(group), cwd, word) == (process.pid, str(tmp_path), "hello")  # a process group of its own
        assert await process.wait() == 0
        assert process.returncode == 0
    finally:
        await stop_stdio_server(process)


async def test_its_stderr_goes_where_the_caller_said(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        process = await start_process(
            [sys.executable, "-c", "import sys; sys.stderr.write('to the log')"],
            env=os.environ,
            cwd=None,
            stderr=errlog,
        )
    assert await process.wait() == 0
    await stop_stdio_server(process)
    assert log.read_text() == "to the log"


async def test_an_upstream_whose_pipes_are_cancelled_as_it_starts_is_stopped_not_left_behind() -> None:
    marker = "mcpstore-test-cancelled-start"
    parameters = StdioServerParameters(command=sys.executable, args=["-c", "import sys; sys.stdin.read()", marker])
    entered = False
    with anyio.CancelScope() as scope:
        scope.cancel()  # delivered at the first wait after the process started
        async with StdioPipes(parameters, os.open(os.devnull, os.O_WRONLY)):
            entered = True
            await anyio.sleep(60)
    assert scope.cancelled_caught
    assert entered
    assert _children_running(marker) == []


async def test_a_command_that_cannot_start_raises_the_os_error_and_leaves_no_pipe_open() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with open(os.devnull, "w") as errlog, pytest.raises(FileNotFoundError):  # noqa: ASYNC230  # /dev/null
        await start_process(["/no/such/command"], env=os.environ, cwd=None, stderr=errlog)
    assert len(os.listdir("/proc/self/fd")) == before


async def test_writing_to_one_that_has_exited_breaks_the_stream_rather_than_hanging() -> None:
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230  # /dev/null never blocks
        process = await start_process([sys.executable, "-c", "pass"], env=os.environ, cwd=None, stderr=errlog)
    try:
        assert await process.wait() == 0
        with pytest.raises(anyio.BrokenResourceError):
            await _fill(process.stdin)
    finally:
        await stop_stdio_server(process)
    with pytest.raises(anyio.ClosedResourceError):
        await process.stdin.send(b"after the stop")


async def test_a_write_larger_than_the_pipe_waits_for_the_upstream_to_read_and_loses_nothing() -> None:
    count = "import sys; sys.stdout.write(str(len(sys.stdin.buffer.read())))"
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230  # /dev/null never blocks
        process = await start_process([sys.executable, "-c", count], env=os.environ, cwd=None, stderr=errlog)
    try:
        for _ in range(64):  # 4 MiB through a 64 KiB pipe: each send waits for the pipe to drain
            await process.stdin.send(b"x" * 65536)
        await process.stdin.aclose()
        assert process.stdout is not None
        assert await _all_of(process.stdout) == str(64 * 65536).encode()
    finally:
        await stop_stdio_server(process)
