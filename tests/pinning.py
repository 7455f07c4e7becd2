"""Scaffolding for the tool-pinning tests: the mutable fixture upstream, and waiters for the catalog-change and
tools/list_changed notices that a pin decision causes (never by sleeping).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import types

from mcpstore_proxy.engine import ProxyEngine
from tests.support import fixture_server


def mutable(name: str = "state", *flags: str, **options: Any) -> dict[str, Any]:
    """A shared fixture upstream whose echo `mutate` can change."""
    return fixture_server(name, "--mutable", *flags, session="shared", **options)


class CatalogChanges:
    """The engine's catalog-change notices, waited for until a condition holds (never by sleeping)."""

    def __init__(self, engine: ProxyEngine) -> None:
        self._changed = anyio.Event()
        engine.add_listener(self._on_change)

    async def _on_change(self) -> None:
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(5):
            while not condition():
                await self._changed.wait()
                self._changed = anyio.Event()


class ListChanges:
    """A real client's tools/list_changed notices, waited for one at a time."""

    def __init__(self) -> None:
        self._changed = anyio.Event()

    async def on_message(self, message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._changed.set()

    async def until(self, condition: Callable[[], Awaitable[bool]]) -> None:
        with anyio.fail_after(10):
            while not await condition():
                await self._changed.wait()
                self._changed = anyio.Event()
