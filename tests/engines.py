"""The engine in memory, for the tests that drive it directly (no HTTP): `running_engine` and its harness, and
`RecordingClient`, a downstream client as the engine sees it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mcp import types
from pydantic import BaseModel

from mcpstore_proxy.config import load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.relay import ClientCall
from tests.clock import ManualClock
from tests.memory import MemoryUpstreams
from tests.support import write_config

__all__ = ["EngineHarness", "RecordingClient", "running_engine"]

_ResultT = TypeVar("_ResultT", bound=BaseModel)


@dataclass(eq=False)
class RecordingClient:
    """A downstream client as the engine sees it (a `ClientChannel`): it keeps what it is sent."""

    notices: list[types.ServerNotification] = field(default_factory=list[types.ServerNotification])
    capabilities: types.ClientCapabilities | None = None
    accepts_requests: bool = False

    async def notify(self, notification: types.ServerNotification) -> None:
        self.notices.append(notification)

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        raise AssertionError(f"no upstream here should ask the client anything, got {request}")

    def call(self) -> ClientCall:
        return ClientCall(stream=self, connection=self)

    @property
    def warnings(self) -> list[str]:
        return [
            str(notice.params.data)
            for notice in self.notices
            if isinstance(notice, types.LoggingMessageNotification) and notice.params.level == "warning"
        ]


@dataclass(eq=False)
class EngineHarness:
    engine: ProxyEngine
    upstreams: MemoryUpstreams
    clock: ManualClock

    async def call(self, key: SessionKey, tool: str, client: RecordingClient | None = None, **arguments: Any) -> Any:
        """Call the exposed `tool` in `key`'s session (for `client`, if given); its structured result."""
        route = self.engine.tool_route(key, tool)
        result = await self.engine.call_tool(key, route, arguments, client.call() if client else None)
        assert not result.get("isError"), result
        return result["structuredContent"]["result"]

    def tool_names(self, key: SessionKey | None = None) -> set[str]:
        catalog = self.engine.catalog if key is None else self.engine.catalog_for(key)
        return {tool.name for tool in catalog.tools}


@asynccontextmanager
async def running_engine(
    tmp_path: Path, servers: dict[str, Any], *, wait: bool = True, **settings: Any
) -> AsyncGenerator[EngineHarness]:
    """The engine over `servers` with upstreams in memory and expiry on a hand-moved clock (once every first start
    is done, unless `wait` is False); leaving it checks that no upstream instance outlived it."""
    upstreams, clock = MemoryUpstreams(), ManualClock()
    config = write_config(tmp_path, servers, **settings)
    async with ProxyEngine(load_settings(config), transports=upstreams, clock=clock) as engine:
        if wait:
            await engine.started()
        yield EngineHarness(engine, upstreams, clock)
    assert not upstreams.live, f"upstream instances {sorted(upstreams.live)} outlived the engine"
