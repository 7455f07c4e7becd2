"""Opening the byte-level connection to one upstream: stdio, Streamable HTTP or legacy SSE.

`open_transport` yields the `(read, write)` stream pair that a `ClientSession`
runs on. It must be entered and exited by the same task (the SDK transports
hold task groups), which is why only `UpstreamSession`'s owner task calls it.
It is the default `TransportFactory`; the engine takes another one where
upstreams live elsewhere (the tests run real `mcp` servers in memory).

A stdio upstream runs on `stdio_pipes` (its pipes read and written by the
session's own tasks). Its stderr is read through a pipe of ours into a `StderrTail`,
so a failure can quote the upstream's last words instead of "connection closed".
What a transport reports back while it is open are `TransportEvents`; that its
upstream's stream ended, `SessionReadStream` tells (taking out the answers to the
proxy's own requests on the way).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx2
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.shared.message import SessionMessage

from mcpstore_proxy.compat import ReadStream, TransportStreams
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.spent_messages import ReleasingReadStream
from mcpstore_proxy.stdio_pipes import RawAnswers, StdioPipes, StdoutMessages

__all__ = [
    "AnswerTaker",
    "SessionReadStream",
    "StderrReading",
    "StderrTail",
    "StdioTransport",
    "TransportEvents",
    "TransportFactory",
    "TransportStreams",
    "open_transport",
]

logger = logging.getLogger(__name__)

_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
_STDERR_DRAIN_SECONDS = 0.5


class StderrTail:
    """The last lines an upstream process wrote to stderr, each also logged at DEBUG."""

    __slots__ = ("_lines", "_max_lines", "upstream")

    def __init__(self, upstream: str, max_lines: int = 20) -> None:
        self.upstream = upstream
        self._max_lines = max_lines
        self._lines: deque[str] | None = None
        """Made at the first line: most upstreams say nothing on stderr, and an empty `deque` is 0.6 KiB."""

    def summary(self, max_chars: int = 400) -> str:
        text = " | ".join(self._lines or ())
        return text if len(text) <= max_chars else "…" + text[-max_chars:]

    def add(self, line: str) -> None:
        line = line.rstrip()
        if line:
            if self._lines is None:
                self._lines = deque(maxlen=self._max_lines)
            self._lines.append(line)
            logger.debug("[%s stderr] %s", self.upstream, line)

    def reading(self, fd: int, *, grace_seconds: float = _STDERR_DRAIN_SECONDS) -> StderrReading:
        """Read `fd` (a pipe's read end) into the tail while the block runs (see `StderrReading`)."""
        return StderrReading(self, fd, grace_seconds)


class StderrReading:
    """Reads a pipe's read end into a `StderrTail` while its block runs, splitting lines; then waits up to
    `grace_seconds` for the last ones, and closes it.

    No task: the event loop calls back whenever the pipe is readable, which spares every upstream session a task,
    its task group and their events (the proxy serves on asyncio, whose loop watches the fd). A class, not a
    generator and a closure: it stays open for the session's whole life, and its slots are a third of their size.
    """

    __slots__ = ("_ended", "_fd", "_grace_seconds", "_loop", "_pending", "_tail")

    def __init__(self, tail: StderrTail, fd: int, grace_seconds: float) -> None:
        self._tail = tail
        self._fd = fd
        self._grace_seconds = grace_seconds
        self._pending = bytearray()

    async def __aenter__(self) -> None:
        self._loop = asyncio.get_running_loop()
        os.set_blocking(self._fd, False)
        self._ended: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(self._fd, self._readable)

    async def __aexit__(self, *_: object) -> None:
        # The process is gone: take its last lines, but a grandchild that inherited stderr must not keep us.
        with anyio.move_on_after(self._grace_seconds, shield=True):
            await self._ended
        self._loop.remove_reader(self._fd)
        self._tail.add(self._pending.decode(errors="replace"))
        os.close(self._fd)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._loop.remove_reader(self._fd)
            if not self._ended.done():
                self._ended.set_result(None)
            return
        pending = self._pending
        pending.extend(chunk)
        *lines, rest = pending.split(b"\n")
        for line in lines:
            self._tail.add(line.decode(errors="replace"))
        pending[:] = rest


@dataclass(frozen=True, slots=True)
class TransportEvents:
    """What a transport reports back about its upstream while it is open."""

    stderr: StderrTail
    """Collects what the upstream says on stderr (a process's own, or anything else worth quoting)."""
    session_expired: Callable[[], None]
    """Called when a Streamable HTTP upstream answers 404 for our session id: the spec's way of saying the
    session is gone and must be re-initialized."""


class AnswerTaker(RawAnswers, Protocol):
    """Takes the answers to requests the proxy sent itself off a session's read stream (`DirectRequests`): off a
    stdio upstream's lines before they are parsed (`take_raw`), off any other stream's messages (`take`)."""

    def take(self, item: SessionMessage | Exception) -> bool:
        """Whether `item` was one of those answers (and was handed to its request)."""
        ...

    def close(self) -> None:
        """The stream ended or was closed: no more answers will come."""
        ...


class SessionReadStream(ReleasingReadStream):
    """A transport's read stream as the upstream session reads it. Messages pass through unchanged, but for those
    `answers` takes; when the upstream's stream ends (a crash or exit, as against a close we asked for) `on_end` is
    told and `has_ended` set; when it ends or is closed, `answers` is closed. Each message given out is emptied
    once the next is asked for (see `ReleasingReadStream`).

    Wrapping rather than relaying adds no task or stream hop to the hot path.
    """

    __slots__ = ("_answers", "_on_end", "_typed_answers", "has_ended")

    def __init__(
        self,
        inner: ReadStream[SessionMessage | Exception],
        on_end: Callable[[], None],
        answers: AnswerTaker | None = None,
    ) -> None:
        super().__init__(inner)
        self._on_end = on_end
        self._answers = answers
        self._typed_answers = answers
        """Who takes answers off the parsed messages: none when the stdio pipes take them off the lines first."""
        self.has_ended = False
        if answers is not None and isinstance(inner, StdoutMessages):
            inner.offer_answers_to(answers)
            self._typed_answers = None

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise anyio.EndOfStream from None

    async def __anext__(self) -> SessionMessage | Exception:
        # What the SDK's dispatcher awaits, for the session's whole life: one frame, not one per wrapper.
        self._let_go()
        try:
            while True:
                item = await self._inner.receive()
                if self._typed_answers is None or not self._typed_answers.take(item):
                    return self._given(item)
        except anyio.EndOfStream:
            self._ended()
            raise StopAsyncIteration from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended()
            raise

    def _ended(self) -> None:
        self.has_ended = True
        self._on_end()
        if self._answers is not None:
            self._answers.close()

    async def aclose(self) -> None:
        if self._answers is not None:
            self._answers.close()
        await self._inner.aclose()


class TransportFactory(Protocol):
    def __call__(
        self, upstream: str, config: UpstreamConfig, events: TransportEvents
    ) -> AbstractAsyncContextManager[TransportStreams]:
        """Connect to the upstream named `upstream`; leaving the context disconnects it (and stops its process)."""
        ...


def open_transport(
    upstream: str, config: UpstreamConfig, events: TransportEvents
) -> AbstractAsyncContextManager[TransportStreams]:
    """Connect to the upstream described by `config`; closing the context stops it (and its process)."""
    if config.resolved_transport == "stdio":
        return StdioTransport(_parameters(config), events.stderr)
    return _http_transport(config, events)


class StdioTransport:
    """An upstream process's stdin and stdout as the session's streams (`StdioPipes`), its stderr read into a
    `StderrTail` while it runs. A class, not nested generators: it stays entered for the session's whole life."""

    __slots__ = ("_parameters", "_pipes", "_reading", "_stderr")

    def __init__(self, parameters: StdioServerParameters, stderr: StderrTail) -> None:
        self._parameters: StdioServerParameters | None = parameters
        """Until the process is started (0.6 KiB, which the session's whole life need not keep)."""
        self._stderr = stderr
        self._reading: StderrReading | None = None
        self._pipes: StdioPipes | None = None

    async def __aenter__(self) -> TransportStreams:
        parameters, self._parameters = self._parameters, None
        assert parameters is not None, "entered once"
        read_fd, write_fd = os.pipe()
        reading = self._reading = self._stderr.reading(read_fd)
        await reading.__aenter__()
        try:
            pipes = StdioPipes(parameters, write_fd)
            streams = await pipes.__aenter__()
        except BaseException:
            await reading.__aexit__(None, None, None)
            raise
        self._pipes = pipes
        return streams

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._reading is not None
        assert self._pipes is not None
        try:
            await self._pipes.__aexit__(*exc_info)
        finally:
            await self._reading.__aexit__(*exc_info)


@asynccontextmanager
async def _http_transport(config: UpstreamConfig, events: TransportEvents) -> AsyncGenerator[TransportStreams]:
    assert config.url is not None
    if config.resolved_transport == "sse":
        async with sse_client(config.url, headers=dict(config.headers)) as streams:
            yield streams
        return

    async def watch_for_expiry(response: httpx2.Response) -> None:
        if response.status_code == 404 and MCP_SESSION_ID_HEADER in response.request.headers:
            events.session_expired()

    async with (
        httpx2.AsyncClient(
            headers=dict(config.headers), timeout=_HTTP_TIMEOUT, event_hooks={"response": [watch_for_expiry]}
        ) as http,
        streamable_http_client(config.url, http_client=http) as streams,
    ):
        yield streams


def _parameters(config: UpstreamConfig) -> StdioServerParameters:
    assert config.command is not None
    return StdioServerParameters(command=config.command, args=config.args, env=config.env, cwd=config.cwd)
