"""Upstreams in memory: the test fixture servers, run as real `mcp` servers over memory streams.

`MemoryUpstreams` is a `TransportFactory`. An `mcpServers` entry that runs
tests/fixtures/stateful_server.py (what `support.fixture_server` writes) is
served in memory instead: each connection gets a fresh server instance, as
each session would get a fresh process, with the same flags (--fail-start,
--fail-until, --start-gate, --start-after, ...). whoami answers the instance's identity (a
number no pid reaches) and crash ends the instance mid-call. Other fixture
scripts can be served in memory too (`scripts`: script path → server builder).
Any other entry goes through the real transports.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import yaml
from mcp import types
from mcp.server import Server
from mcp.shared.memory import MessageStream, create_client_server_memory_streams

from mcpstore_proxy.client_capabilities import ClientCapability
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.relay import SessionRelay
from mcpstore_proxy.transports import TransportEvents, TransportFactory, TransportStreams, open_transport
from mcpstore_proxy.upstream import UpstreamSession
from tests.fixtures.stateful_server import build, parse
from tests.support import fixture_server

__all__ = ["FIRST_IDENTITY", "MemoryUpstreams", "fixture_session"]

STATEFUL_SERVER: Final = Path(__file__).parent / "fixtures" / "stateful_server.py"
FIRST_IDENTITY: Final = 10**9
"""In-memory instances are numbered from here, above any pid."""


class _MemoryHost:
    def __init__(self, identity: int, scope: anyio.CancelScope) -> None:
        self._identity = identity
        self._scope = scope

    @property
    def identity(self) -> int:
        return self._identity

    async def crash(self) -> None:
        self._scope.cancel()
        await anyio.sleep_forever()


class MemoryUpstreams:
    """Runs fixture upstreams in memory; keeps count of the instances that are live."""

    def __init__(self, scripts: Mapping[Path, Callable[[], Server[Any]]] | None = None) -> None:
        self._scripts = dict(scripts or {})
        self.live: set[int] = set()
        """Identities of the instances running now."""
        self.started: list[int] = []
        """Identities of every instance started, in order."""
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._identities = itertools.count(FIRST_IDENTITY)

    def __repr__(self) -> str:
        return f"<MemoryUpstreams {len(self.live)} live of {len(self.started)} started>"

    def is_alive(self, identity: int) -> bool:
        return identity in self.live

    def kill(self, identity: int) -> None:
        """End the instance at once, from outside, as SIGKILL ends a process (call it on the loop it runs on)."""
        self._scopes[identity].cancel()

    def __call__(
        self, upstream: str, config: UpstreamConfig, events: TransportEvents
    ) -> AbstractAsyncContextManager[TransportStreams]:
        script = Path(config.args[0]) if config.command == sys.executable and config.args else None
        if script == STATEFUL_SERVER:
            return self._serve(parse(config.args[1:]), events)
        if script is not None and script in self._scripts:
            return self._serve_script(self._scripts[script]())
        return open_transport(upstream, config, events)

    @asynccontextmanager
    async def _serve_script(self, server: Server[Any]) -> AsyncGenerator[TransportStreams]:
        identity = next(self._identities)
        self.started.append(identity)
        self.live.add(identity)
        try:
            async with (
                create_client_server_memory_streams() as (client, (server_read, server_write)),
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(server.run, server_read, server_write, server.create_initialization_options())
                try:
                    yield client
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.live.discard(identity)

    @asynccontextmanager
    async def _serve(self, arguments: argparse.Namespace, events: TransportEvents) -> AsyncGenerator[TransportStreams]:
        identity = next(self._identities)
        self.started.append(identity)
        self.live.add(identity)
        done = anyio.Event()
        try:
            async with (
                create_client_server_memory_streams() as (client, server_streams),
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(self._run, arguments, identity, server_streams, events, done)
                try:
                    yield client
                finally:
                    # EOF the server, as closing a process's stdin would; it exits on its own, or is stopped.
                    await client[1].aclose()
                    with anyio.move_on_after(2, shield=True):
                        await done.wait()
                    tg.cancel_scope.cancel()
        finally:
            self.live.discard(identity)

    async def _run(
        self,
        arguments: argparse.Namespace,
        identity: int,
        streams: MessageStream,
        events: TransportEvents,
        done: anyio.Event,
    ) -> None:
        server_read, server_write = streams
        try:
            with anyio.CancelScope() as scope:
                self._scopes[identity] = scope
                start_after: Path | None = arguments.start_after
                if start_after is not None:
                    start_after.with_name(f"waiting-{identity}").touch()
                    while not await anyio.Path(start_after).exists():  # noqa: ASYNC110  # a file offers no event
                        await anyio.sleep(0.02)
                gate: Path | None = arguments.start_gate
                if gate is not None and (gate / "slow").exists():
                    (gate / f"hanging-{identity}").touch()
                    await anyio.sleep_forever()
                if arguments.fail_start is not None:
                    events.stderr.add(arguments.fail_start)
                    return
                if arguments.fail_until is not None and not arguments.fail_until.exists():
                    events.stderr.add(f"waiting for {arguments.fail_until}")
                    return
                server = build(arguments, _MemoryHost(identity, scope))
                lowlevel: Server = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]  # as the SDK's InMemoryTransport does
                await lowlevel.run(server_read, server_write, lowlevel.create_initialization_options())
        finally:
            # However the instance ended (EOF, crash, failure), its client sees the connection end.
            await server_write.aclose()
            await server_read.aclose()
            self.live.discard(identity)
            self._scopes.pop(identity, None)
            done.set()


def one_tool_upstream(
    directory: Path,
    tool: str,
    result: types.CallToolResult | Callable[[types.CallToolRequestParams], types.CallToolResult],
) -> tuple[Path, MemoryUpstreams]:
    """A config whose one upstream, served in memory, offers the tool `tool` (no prefix), which answers `result`
    (or what `result` makes of the call's parameters)."""

    def server() -> Server[Any]:
        async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
            return types.ListToolsResult(tools=[types.Tool(name=tool, input_schema={"type": "object"})])

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            return result if isinstance(result, types.CallToolResult) else result(params)

        return Server(tool, on_list_tools=list_tools, on_call_tool=call_tool)

    script = directory / f"{tool}_server.py"
    script.write_text("")
    config = directory / "proxy.yaml"
    entry = {"command": sys.executable, "args": [str(script)], "prefix": ""}
    config.write_text(yaml.safe_dump({"mcpServers": {tool: entry}}))
    return config, MemoryUpstreams(scripts={script: server})


@asynccontextmanager
async def fixture_session(
    relay: SessionRelay,
    declared: frozenset[ClientCapability] = frozenset(),
    through: Callable[[TransportFactory], TransportFactory] = lambda transports: transports,
    **config: Any,
) -> AsyncGenerator[UpstreamSession]:
    """A real `UpstreamSession` with the fixture server (in memory) whose messages go through `relay`; its
    transport, `through` whatever wraps it (to watch what is written); `config`, settings of its upstream."""
    upstreams = MemoryUpstreams()
    session = UpstreamSession(
        "up",
        UpstreamConfig.model_validate(fixture_server("up", **config)),
        start_timeout_seconds=10,
        relay=relay,
        declared=declared,
        transports=through(upstreams),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        try:
            with anyio.fail_after(10):
                await session.client()
                yield session
        finally:
            await session.aclose()
    assert not upstreams.live
