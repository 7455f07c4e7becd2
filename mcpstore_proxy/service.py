"""One configured upstream, kept running for its tool catalog and retried with backoff when it fails.

`UpstreamService.maintain` owns the upstream's *catalog session*. Started with
the proxy, it answers `tools/list` for the catalog, so listing tools never
spawns a client's session, and its `tools/list_changed` notices refresh the
catalog. A shared upstream serves every client's calls on that same session;
an isolated one serves each session key from its own `SessionPool`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
from mcp import MCPError, types
from mcp.client.session import IncomingMessage

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import UpstreamClosedError, UpstreamError, UpstreamStartError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.pool import ResetNotifier, SessionPool, Spawner
from mcpstore_proxy.upstream import EndReason, ProgressCallback, UpstreamSession

__all__ = ["ServiceState", "UpstreamService"]

logger = logging.getLogger(__name__)

_FIRST_RETRY_SECONDS: Final = 1.0
_MAX_RETRY_SECONDS: Final = 60.0
_STABLE_AFTER_SECONDS: Final = 30.0


class ServiceState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"


class UpstreamService:
    """A configured upstream: its state, its current tools, and the sessions clients hold with it."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        *,
        prefix: str,
        cap: int,
        start_timeout_seconds: float,
        spawn: Spawner,
        on_tools_changed: Callable[[], None],
    ) -> None:
        self.name = name
        self.config = config
        self.prefix = prefix
        self.state = ServiceState.STARTING
        self.error: UpstreamError | None = None
        self.tools: tuple[types.Tool, ...] = ()
        self.first_attempt_done = anyio.Event()
        self.pool = (
            None
            if config.session == "shared"
            else SessionPool(name, config, cap=cap, start_timeout_seconds=start_timeout_seconds, spawn=spawn)
        )
        self._start_timeout_seconds = start_timeout_seconds
        self._on_tools_changed = on_tools_changed
        self._catalog: UpstreamSession | None = None
        self._wake = anyio.Event()
        self._state_changed = anyio.Event()
        self._is_closing = False
        self._generation = 0
        self._generation_seen: dict[SessionKey, int] = {}

    def __repr__(self) -> str:
        return f"<UpstreamService {self.name} {self.state.value}, {len(self.tools)} tools, {self.pool or 'shared'}>"

    @property
    def visible_tools(self) -> tuple[types.Tool, ...]:
        """The tools to expose: none while the upstream is down."""
        return self.tools if self.state in (ServiceState.READY, ServiceState.RESTARTING) else ()

    async def maintain(self) -> None:
        """Keep the catalog session up until `close()`: start, list tools, follow changes, restart on loss."""
        delay = _FIRST_RETRY_SECONDS
        while not self._is_closing:
            session = UpstreamSession(
                self.name,
                self.config,
                start_timeout_seconds=self._start_timeout_seconds,
                label="catalog",
                message_handler=self._on_message,
                on_end=lambda _: self._wake.set(),
            )
            self._catalog = session
            self._announce_state()
            started = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.run)
                try:
                    await self._serve_catalog(session)
                finally:
                    session.close_soon()
            if self._is_closing:
                return
            if anyio.current_time() - started >= _STABLE_AFTER_SECONDS:
                delay = _FIRST_RETRY_SECONDS
            if session.end_reason is EndReason.LOST and self.state is ServiceState.READY:
                logger.warning("upstream '%s' went away (%s); restarting it", self.name, self._reason(session))
                self._set_state(ServiceState.RESTARTING)
            else:
                self.error = self.error or session.failure or UpstreamStartError(self.name, self._reason(session))
                logger.warning("%s; retrying in %g s", self.error.message, delay)
                self._set_state(ServiceState.FAILED)
            self.first_attempt_done.set()
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_SECONDS)

    async def _serve_catalog(self, session: UpstreamSession) -> None:
        try:
            await self._refresh_tools(session)
        except UpstreamError as error:
            self.error = error
            return
        self.error = None
        self._generation += 1
        self._set_state(ServiceState.READY)
        self.first_attempt_done.set()
        logger.info("upstream '%s' is ready with %d tools", self.name, len(self.tools))
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if session.has_ended or self._is_closing:
                return
            try:
                await self._refresh_tools(session)
            except UpstreamError as error:
                logger.warning("%s", error.message)

    async def _refresh_tools(self, session: UpstreamSession) -> None:
        tools: list[types.Tool] | None = None
        with anyio.move_on_after(self._start_timeout_seconds):
            try:
                tools = await session.list_tools()
            except MCPError as error:
                raise UpstreamStartError(
                    self.name, f"upstream '{self.name}' failed to list its tools: {error.message}"
                ) from None
        if tools is None:
            raise UpstreamStartError(
                self.name, f"upstream '{self.name}' did not list its tools within {self._start_timeout_seconds:g} s"
            )
        if tuple(tools) != self.tools:
            self.tools = tuple(tools)
            self._on_tools_changed()

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._wake.set()

    def _set_state(self, state: ServiceState) -> None:
        was_visible = bool(self.visible_tools)
        self.state = state
        self._announce_state()
        if bool(self.visible_tools) != was_visible:
            self._on_tools_changed()

    def _announce_state(self) -> None:
        self._state_changed.set()
        self._state_changed = anyio.Event()

    def _reason(self, session: UpstreamSession) -> str:
        return session.failure.message if session.failure else f"upstream '{self.name}' closed the connection"

    async def call_tool(
        self,
        key: SessionKey,
        tool: str,
        arguments: Mapping[str, Any] | None,
        *,
        progress_callback: ProgressCallback | None = None,
        on_reset: ResetNotifier | None = None,
    ) -> dict[str, Any]:
        """Call `tool` in the session that `key` holds with this upstream."""
        if self.pool is not None:
            return await self.pool.call_tool(
                key, tool, arguments, progress_callback=progress_callback, on_reset=on_reset
            )
        for attempt in (1, 2):
            session = await self._shared_session()
            if not key.is_ephemeral:
                seen = self._generation_seen.get(key)
                self._generation_seen[key] = self._generation
                if seen is not None and seen != self._generation and on_reset is not None:
                    await on_reset(self.name)
            try:
                return await session.call_tool(tool, arguments, progress_callback)
            except UpstreamClosedError as error:
                if not (error.is_retryable and attempt == 1):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _shared_session(self) -> UpstreamSession:
        with anyio.move_on_after(self._start_timeout_seconds):
            while True:
                session = self._catalog
                if session is not None and not session.is_closing:
                    await session.client()
                    if session.is_ready:
                        return session
                elif self.state is ServiceState.FAILED and self.error is not None:
                    raise self.error
                await self._state_changed.wait()
        raise UpstreamStartError(
            self.name, f"upstream '{self.name}' is still restarting after {self._start_timeout_seconds:g} s"
        )

    async def end_session(self, key: SessionKey) -> None:
        self._generation_seen.pop(key, None)
        if self.pool is not None:
            await self.pool.end(key)

    async def close(self) -> None:
        """Close every client session, then stop the catalog session (and `maintain`)."""
        self._is_closing = True
        if self.pool is not None:
            await self.pool.aclose()
        self._wake.set()
        if self._catalog is not None:
            await self._catalog.aclose()
