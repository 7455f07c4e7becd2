"""The proxy in this process: the real app, served by uvicorn on a loopback port, with upstreams in memory.

`running_app` runs `serve_http` on an event loop of its own thread (so that a
test may block in the SDK's sync API while the proxy answers), with the
fixture upstreams in memory (`MemoryUpstreams`) and a hand-moved clock for
session expiry. It behaves like `support.running_proxy`: real MCP clients reach
it at `proxy.url`, and leaving it stops the proxy the way SIGTERM would and
checks that no upstream instance is left running.

`sdk_store` gives an `MCPStore` in either mode the same way: embedded (its
engine on the store's own loop thread, upstreams in memory) or remote (against
`running_app`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from mcpstore_proxy import MCPStore
from mcpstore_proxy.backends.embedded import embedded_backend
from mcpstore_proxy.bridge import LoopThread
from mcpstore_proxy.config import load_settings
from mcpstore_proxy.logs import RedactSessionIds
from mcpstore_proxy.serving import StopRequests, serve_http
from tests.clock import LoopClock, ManualClock
from tests.memory import MemoryUpstreams
from tests.support import admin_token_of, free_port, health_answers, is_draining, upstreams_started, wait_until

__all__ = ["InProcessProxy", "SdkHarness", "running_app", "sdk_store"]

_T = TypeVar("_T")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.addFilter(RedactSessionIds())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass(eq=False)
class InProcessProxy:
    """A proxy served from this process; `url` is its MCP endpoint."""

    port: int
    upstreams: MemoryUpstreams
    clock: ManualClock
    portal: BlockingPortal
    stop_requests: StopRequests
    capture: _Capture
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    @property
    def log(self) -> str:
        return "\n".join(self.capture.lines)

    def live_upstreams(self) -> set[int]:
        """Identities of the in-memory upstream instances running now."""
        return set(self.upstreams.live)

    async def on_proxy_loop(self, function: Callable[[], Awaitable[_T]]) -> _T:
        """Run `function` on the proxy's own event loop (where its engine lives)."""
        return await anyio.to_thread.run_sync(self.portal.call, function)

    async def kill_upstream(self, identity: int) -> None:
        """End an in-memory upstream instance from outside, as SIGKILL would end its process."""

        async def kill() -> None:
            self.upstreams.kill(identity)

        await self.on_proxy_loop(kill)

    async def advance_clock(self, seconds: float) -> None:
        """Move the proxy's wall clock on by `seconds` (session expiry follows it)."""

        async def advance() -> None:
            self.clock.advance(seconds)

        await self.on_proxy_loop(advance)

    async def loop_clock(self) -> Callable[[float], Awaitable[None]]:
        """From now on the proxy's event loop's own clock moves only when told, for the rest of the proxy's life
        (put back, timers armed meanwhile would fire that much later, its stop's included). Gives `advance(seconds)`,
        which moves it on; the loop's timers due by then (the SDK's idle deadlines, the lane's) have fired when it
        returns, and what they start goes on from there (wait for its outcome)."""
        clock = LoopClock()

        async def enter() -> None:
            clock.__enter__()

        async def advance(seconds: float) -> None:
            async def move() -> None:
                clock.move(seconds)

            async def turned() -> None:
                pass  # run by the loop after a turn that fired the timers due

            await self.on_proxy_loop(move)
            await self.on_proxy_loop(turned)

        await self.on_proxy_loop(enter)
        return advance

    async def request_stop(self) -> None:
        """What SIGTERM does: the first request drains, a second one hurries."""

        async def request() -> None:
            self.stop_requests.request("stop requested")

        await self.on_proxy_loop(request)

    async def start_draining(self) -> None:
        """Request a stop, as SIGTERM does, and wait until the proxy has begun draining (refuses new requests)."""
        await self.request_stop()
        await wait_until(lambda: is_draining(self.port), what="the proxy to start draining")


@asynccontextmanager
async def running_app(
    config: Path,
    *,
    wait_for_upstreams: bool = True,
    upstreams: MemoryUpstreams | None = None,
    admin_token: str | None = None,
) -> AsyncGenerator[InProcessProxy]:
    """Serve `config` from this process on a free loopback port, until the block ends (`admin_token` proves an
    admin, to watch the upstreams start, where the config's own tokens do not say)."""
    port = free_port()
    settings = load_settings(config, port=port)
    upstreams = upstreams or MemoryUpstreams()
    capture = _Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    portal_context = start_blocking_portal(name="in-process proxy")
    portal = portal_context.__enter__()
    try:
        clock, stop = portal.call(_loop_objects)
        served = portal.start_task_soon(
            lambda: serve_http(settings, transports=upstreams, clock=clock, stop=stop), name="serve_http"
        )
        proxy = InProcessProxy(port, upstreams, clock, portal, stop, capture)
        try:
            await wait_until(lambda: _answers(proxy, served.done()), timeout=30, what="the in-process proxy to serve")
            if wait_for_upstreams:
                token = admin_token or admin_token_of(config)
                await wait_until(
                    lambda: upstreams_started(port, token), timeout=30, what="every upstream's first attempt"
                )
            yield proxy
        finally:
            with anyio.CancelScope(shield=True):
                if not served.done():
                    await proxy.request_stop()
                await anyio.to_thread.run_sync(served.result, 60)
                # Every test doubles as a leak check: no upstream instance outlives the proxy.
                assert not upstreams.live, f"upstream instances {sorted(upstreams.live)} outlived the proxy"
    finally:
        await anyio.to_thread.run_sync(portal_context.__exit__, None, None, None)
        root.removeHandler(capture)
        root.setLevel(level)


async def _loop_objects() -> tuple[ManualClock, StopRequests]:
    """Objects that belong to the proxy's loop, made on it."""
    return ManualClock(), StopRequests()


async def _answers(proxy: InProcessProxy, has_ended: bool) -> bool:
    if has_ended:
        raise AssertionError(f"the in-process proxy stopped before serving; log:\n{proxy.log}")
    return await health_answers(proxy.port)


@dataclass(eq=False)
class SdkHarness:
    """An `MCPStore` under test, and what the test can see and move behind it."""

    store: MCPStore
    upstreams: MemoryUpstreams
    advance_clock: Callable[[float], Awaitable[None]]
    """Move the engine's wall clock on by so many seconds (named-session expiry follows it)."""
    kill: Callable[[int], Awaitable[None]]
    """End an in-memory upstream instance from outside, as SIGKILL would end its process."""

    def is_alive(self, identity: int) -> bool:
        """Whether the in-memory upstream instance that answered whoami with `identity` still runs."""
        return self.upstreams.is_alive(identity)


@asynccontextmanager
async def sdk_store(config: Path, mode: str) -> AsyncGenerator[SdkHarness]:
    """An `MCPStore` over `config`, embedded (`mode="embedded"`) or against an in-process proxy (`"remote"`).

    Either way the upstreams run in memory, and leaving checks that none is left running.
    """
    if mode == "remote":
        async with running_app(config) as proxy:
            store = MCPStore.setup_store(url=proxy.url)
            try:
                yield SdkHarness(store, proxy.upstreams, proxy.advance_clock, proxy.kill_upstream)
            finally:
                await anyio.to_thread.run_sync(store.close)
        return
    upstreams = MemoryUpstreams()
    bridge = LoopThread()
    clock, _ = bridge.call(_loop_objects)
    try:
        backend = bridge.enter(embedded_backend(load_settings(config), transports=upstreams, clock=clock))
    except BaseException:
        bridge.close()
        raise
    store = MCPStore(bridge, backend, "embedded")

    async def advance_clock(seconds: float) -> None:
        async def advance() -> None:
            clock.advance(seconds)

        await bridge.call_async(advance)

    async def kill(identity: int) -> None:
        async def on_loop() -> None:
            upstreams.kill(identity)

        await bridge.call_async(on_loop)

    try:
        yield SdkHarness(store, upstreams, advance_clock, kill)
    finally:
        await anyio.to_thread.run_sync(store.close)
        assert not upstreams.live, f"upstream instances {sorted(upstreams.live)} outlived the store"
