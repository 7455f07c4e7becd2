"""The start-up window: how long a client's first requests wait for the upstreams that are still starting.

The engine returns as soon as it has started its upstreams, and each joins the catalog as it comes up. So that
a client's first listing still includes the upstreams that start quickly, `StartupWindow.settled()` waits until
every configured upstream has made its first start attempt, but never past the end of the window
(`startup_wait_seconds` after `open()`): no request waits on a slow upstream for longer, and once the window has
closed (or every upstream has made its attempt), nobody waits again.
"""

from __future__ import annotations

import math

import anyio

from mcpstore_proxy.registry import ServiceRegistry

__all__ = ["StartupWindow"]


class StartupWindow:
    """The first `wait_seconds` of an engine's life, in which requests wait for the configured upstreams' first
    start attempts."""

    def __init__(self, registry: ServiceRegistry, wait_seconds: float) -> None:
        self._registry = registry
        self._wait_seconds = wait_seconds
        self._closes_at = math.inf
        self._has_settled = False

    def __repr__(self) -> str:
        state = "settling" if self.is_settling else "settled" if self._has_settled else "open"
        return f"<StartupWindow {state}, {self._wait_seconds:g} s>"

    def open(self) -> None:
        """The engine starts its upstreams: the window runs from now."""
        self._closes_at = anyio.current_time() + self._wait_seconds

    @property
    def is_starting(self) -> bool:
        """Whether some configured upstream has not yet made its first start attempt."""
        return any(not service.first_attempt_done.is_set() for service in self._registry.configured())

    @property
    def is_settling(self) -> bool:
        """Whether `settled()` would still wait (for some upstream, within the window)."""
        return not self._has_settled and self.is_starting and anyio.current_time() < self._closes_at

    async def settled(self) -> None:
        """Wait until every configured upstream has made its first start attempt, but never past the end of the
        window."""
        if self._has_settled:
            return
        with anyio.move_on_after(self._closes_at - anyio.current_time()):
            for service in self._registry.configured():
                await service.first_attempt_done.wait()
        self._has_settled = not self.is_starting or anyio.current_time() >= self._closes_at
