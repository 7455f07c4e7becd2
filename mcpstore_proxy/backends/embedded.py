"""The embedded backend: the proxy's own engine, in this process, driven directly (no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from mcpstore_proxy.clock import SYSTEM_CLOCK, Clock
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.control import Control
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.registry import ServicePolicy
from mcpstore_proxy.transports import TransportFactory, open_transport

__all__ = ["embedded_backend"]


@asynccontextmanager
async def embedded_backend(
    settings: ProxySettings, *, transports: TransportFactory = open_transport, clock: Clock = SYSTEM_CLOCK
) -> AsyncGenerator[Control]:
    """Start an engine over `settings` and yield its control operations; leaving stops every upstream.

    The SDK runs in the operator's own process, so it may add command (stdio) services. Unlike the server, it
    waits for every upstream's first start attempt, so that the tools are there for the first call.
    """
    async with ProxyEngine(settings, transports=transports, clock=clock) as engine:
        await engine.started()
        yield Control(engine, policy=ServicePolicy())
