"""The proxy's stdio face in process: `piped_proxy` serves a config to one client over two OS pipes (as
`mcpstore-proxy stdio` serves Claude Desktop on fds 0 and 1), with its upstreams in memory; the client is either
raw JSON lines (`RawPipe`, to see the wire) or the SDK's own `Client` over the same pipes (`sdk_client`)."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from starlette.types import Scope

from mcpstore_proxy.config import load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.json_bytes import from_json, to_json
from mcpstore_proxy.lane_messages import MessageLane, Reply
from mcpstore_proxy.server import ProxyServer
from mcpstore_proxy.serving import serve_pipe
from mcpstore_proxy.stdio import stdio_streams
from tests.memory import MemoryUpstreams

__all__ = ["Pipes", "RawPipe", "piped_proxy", "sdk_client"]

HANDSHAKE = "2025-11-25"


@dataclass(eq=False)
class Pipes:
    """The client's ends of the two pipes, and the proxy's stdio lane (to see what it took)."""

    to_proxy: int
    from_proxy: int
    lane: MessageLane
    upstreams: MemoryUpstreams


@asynccontextmanager
async def piped_proxy(config: Path, *, lane: bool = True, **settings: Any) -> AsyncGenerator[Pipes]:
    """Serve `config` on a pipe until the block ends, which closes the client's end (EOF, as a client quitting);
    without the stdio lane where `lane` is False (every message to the SDK, to compare)."""
    proxy_in, to_proxy = os.pipe()
    from_proxy, proxy_out = os.pipe()
    upstreams = MemoryUpstreams()
    try:
        async with (
            ProxyEngine(load_settings(config, **settings), transports=upstreams) as engine,
            anyio.create_task_group() as tg,
        ):
            await engine.started()
            server = ProxyServer(engine, stdio=True)
            stdio_lane = MessageLane.for_pipe(server) if lane else _NoLane(server, "stdio", lambda: None)
            served = anyio.Event()

            async def serve() -> None:
                try:
                    await serve_pipe(server, proxy_in, proxy_out, lane=stdio_lane)
                finally:
                    served.set()

            tg.start_soon(serve)
            try:
                yield Pipes(to_proxy, from_proxy, stdio_lane, upstreams)
            finally:
                os.close(to_proxy)  # EOF: the proxy ends the session at once
                to_proxy = -1
                with anyio.fail_after(10):
                    await served.wait()
        assert not upstreams.live, f"upstream instances {sorted(upstreams.live)} outlived the pipe"
    finally:
        for fd in (proxy_in, from_proxy, proxy_out, to_proxy):
            if fd >= 0:
                os.close(fd)


class _NoLane(MessageLane):
    def take(self, line: bytes, reply: Reply, scope: Scope | None = None) -> bool:
        return False


@asynccontextmanager
async def sdk_client(pipes: Pipes, **options: Any) -> AsyncGenerator[Client]:
    """The SDK's client over the pipes (the handshake era unless `mode` says otherwise)."""
    options.setdefault("mode", "legacy")
    async with Client(stdio_streams(pipes.from_proxy, pipes.to_proxy), **options) as client:
        yield client


@dataclass(eq=False)
class RawPipe:
    """A client that writes and reads JSON-RPC lines itself."""

    pipes: Pipes
    _pending: bytes = b""
    _lines: list[bytes] = field(default_factory=list[bytes])

    async def write(self, *messages: dict[str, Any]) -> None:
        """Write the messages in one write (so the proxy reads them in one chunk)."""
        data = b"".join(to_json(message) + b"\n" for message in messages)
        view = memoryview(data)
        os.set_blocking(self.pipes.to_proxy, False)  # a full pipe must not block the loop the proxy reads it on
        while view:
            await anyio.wait_writable(self.pipes.to_proxy)
            try:
                view = view[os.write(self.pipes.to_proxy, view) :]
            except BlockingIOError:
                continue

    async def next_message(self, timeout: float = 10) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while not self._lines:
                await anyio.wait_readable(self.pipes.from_proxy)
                chunk = os.read(self.pipes.from_proxy, 1 << 20)
                assert chunk, "the proxy closed its end"
                *lines, self._pending = (self._pending + chunk).split(b"\n")
                self._lines.extend(lines)
        message: dict[str, Any] = from_json(self._lines.pop(0))  # pyright: ignore[reportAssignmentType]
        return message

    async def request(self, request_id: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return the next message (its answer, where nothing else comes first)."""
        await self.write({"jsonrpc": "2.0", "id": request_id, "method": method, **_params(params)})
        return await self.next_message()

    async def handshake(self, *, initialized: bool = True) -> None:
        """`initialize`, then (unless not wanted) `notifications/initialized`."""
        params = {"protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        answer = await self.request(0, "initialize", params)
        assert answer["result"]["protocolVersion"] == HANDSHAKE, answer
        if initialized:
            await self.write({"jsonrpc": "2.0", "method": "notifications/initialized"})


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    return {} if params is None else {"params": params}


def tool_call(request_id: Any, name: str, arguments: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, **params},
    }
