"""`Session`: one named session of the SDK, with MCPStore's session API.

A `Session` is a handle: its state (bound services, the upstream sessions,
their expiry) lives in the engine, keyed by agent and session id, so any number
of handles, threads or tasks can use the same session without sharing an
attribute that could cross them. Used as a context manager (sync or async), a
session is the *current* session for the block (kept in a context variable,
so each thread and task has its own) and is closed when the block ends.

A tool that answers `isError: true` is returned as it answered, and logged at
WARNING with its name and error text (`checked_result`, shared by every way
the SDK calls a tool); `raise_on_error=True` raises `ToolError` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from mcp import types

from mcpstore_proxy.control import SessionInfo, ToolInfo
from mcpstore_proxy.errors import ToolError

if TYPE_CHECKING:
    from mcpstore_proxy.store import MCPStore

__all__ = ["CURRENT_SESSION", "Session", "SessionBlock", "checked_result", "error_text"]

logger = logging.getLogger(__name__)

CURRENT_SESSION: ContextVar[Session | None] = ContextVar("mcpstore_proxy.current_session", default=None)
"""The session of the innermost `with_session` block in this thread or task."""


class Session:
    """A named session in one scope (the store's, or an agent's)."""

    def __init__(self, store: MCPStore, agent: str, session_id: str) -> None:
        self._store = store
        self._agent = agent
        self._session_id = session_id
        self._tokens: list[Token[Session | None]] = []
        self._bridge = store.bridge
        self._backend = store.backend

    def __repr__(self) -> str:
        scope = f" of agent {self._agent!r}" if self._agent else ""
        return f"<Session {self._session_id!r}{scope}>"

    @property
    def store(self) -> MCPStore:
        return self._store

    @property
    def agent_id(self) -> str | None:
        return self._agent or None

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def is_active(self) -> bool:
        """Whether the session is open (not closed, not expired)."""
        return self._bridge.call(self._backend.find_session, self._agent, self._session_id) is not None

    @property
    def service_count(self) -> int:
        return self.session_info().service_count

    @property
    def tool_count(self) -> int:
        return self.session_info().tool_count

    # Queries.

    def session_info(self) -> SessionInfo:
        return self._bridge.call(self._backend.session_info, self._agent, self._session_id)

    async def session_info_async(self) -> SessionInfo:
        return await self._bridge.call_async(self._backend.session_info, self._agent, self._session_id)

    def list_services(self) -> list[str]:
        return self.session_info().bound_services

    async def list_services_async(self) -> list[str]:
        return (await self.session_info_async()).bound_services

    def list_tools(self) -> list[ToolInfo]:
        """The tools of the bound services (or every tool of the scope, while none is bound)."""
        return self._bridge.call(self._backend.list_tools, self._agent, self._session_id)

    async def list_tools_async(self) -> list[ToolInfo]:
        return await self._bridge.call_async(self._backend.list_tools, self._agent, self._session_id)

    def connection_status(self) -> dict[str, str]:
        """Per bound service: `connected`, `starting`, `disconnected` (reopens on the next call) or `failed`."""
        return self.session_info().connection_status

    async def connection_status_async(self) -> dict[str, str]:
        return (await self.session_info_async()).connection_status

    # Operations.

    def bind_service(self, name: str) -> Self:
        """Bind a service to this session and open the session's connection to it now."""
        self._bridge.call(self._backend.bind_service, self._agent, self._session_id, name)
        return self

    async def bind_service_async(self, name: str) -> Self:
        await self._bridge.call_async(self._backend.bind_service, self._agent, self._session_id, name)
        return self

    def use_tool(
        self, name: str, arguments: dict[str, Any] | None = None, *, raise_on_error: bool = False
    ) -> types.CallToolResult:
        """Call a tool in this session: by the upstream's own name when unambiguous, else by its prefixed name.

        Raises:
            ToolError: the tool answered `isError: true`, and `raise_on_error` asks for an exception.
        """
        result = self._bridge.call(self._backend.call_tool, self._agent, self._session_id, name, arguments)
        return checked_result(name, result, raise_on_error=raise_on_error)

    async def use_tool_async(
        self, name: str, arguments: dict[str, Any] | None = None, *, raise_on_error: bool = False
    ) -> types.CallToolResult:
        call_tool = self._backend.call_tool
        result = await self._bridge.call_async(call_tool, self._agent, self._session_id, name, arguments)
        return checked_result(name, result, raise_on_error=raise_on_error)

    call_tool = use_tool
    call_tool_async = use_tool_async

    def restart_session(self) -> Self:
        """Start fresh upstream sessions for the bound services; the old state is gone."""
        self._bridge.call(self._backend.restart_session, self._agent, self._session_id)
        return self

    async def restart_session_async(self) -> Self:
        await self._bridge.call_async(self._backend.restart_session, self._agent, self._session_id)
        return self

    def extend_session(self, seconds: float = 3600) -> Self:
        """Move the session's expiry later by exactly `seconds`."""
        self._bridge.call(self._backend.extend_session, self._agent, self._session_id, seconds)
        return self

    async def extend_session_async(self, seconds: float = 3600) -> Self:
        await self._bridge.call_async(self._backend.extend_session, self._agent, self._session_id, seconds)
        return self

    def clear_cache(self) -> Self:
        """Drop what is known of the bound services' tools and read them again from the upstreams."""
        self._bridge.call(self._backend.clear_cache, self._agent, self._session_id)
        return self

    async def clear_cache_async(self) -> Self:
        await self._bridge.call_async(self._backend.clear_cache, self._agent, self._session_id)
        return self

    def close_session(self) -> None:
        """Close the session: its upstream sessions end and their processes stop."""
        self._bridge.call(self._backend.close_session, self._agent, self._session_id)

    async def close_session_async(self) -> None:
        await self._bridge.call_async(self._backend.close_session, self._agent, self._session_id)

    def open(self) -> Self:
        self._bridge.call(self._backend.open_session, self._agent, self._session_id)
        return self

    async def open_async(self) -> Self:
        await self._bridge.call_async(self._backend.open_session, self._agent, self._session_id)
        return self

    # The session as the current one, for a block.

    def __enter__(self) -> Self:
        self.open()
        self._tokens.append(CURRENT_SESSION.set(self))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        CURRENT_SESSION.reset(self._tokens.pop())
        self.close_session()

    async def __aenter__(self) -> Self:
        await self.open_async()
        self._tokens.append(CURRENT_SESSION.set(self))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        CURRENT_SESSION.reset(self._tokens.pop())
        await self.close_session_async()


class SessionBlock:
    """What `with_session_async` returns: `async with` it, or await it first and `async with` what it gives, as
    MCPStore 1.x code does (its `with_session_async` is a coroutine that returns the context manager):

        async with context.with_session_async("task") as s: ...
        async with await context.with_session_async("task") as s: ...

    Either way the block runs in the session, which closes when the block ends.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def __repr__(self) -> str:
        return f"<SessionBlock {self.session.session_id!r}>"

    def __await__(self) -> Generator[Any, None, Session]:
        return self._session().__await__()

    async def _session(self) -> Session:
        return self.session

    async def __aenter__(self) -> Session:
        return await self.session.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.session.__aexit__(exc_type, exc, tb)


def checked_result(name: str, result: types.CallToolResult, *, raise_on_error: bool) -> types.CallToolResult:
    """`result` as the tool `name` answered it; an error answer is logged, and raised when `raise_on_error`.

    Raises:
        ToolError: the tool answered `isError: true` and `raise_on_error` is set.
    """
    if result.is_error:
        text = error_text(result)
        logger.warning("tool '%s' answered with an error: %s", name, text or "(no text)")
        if raise_on_error:
            raise ToolError(name, text, result)
    return result


def error_text(result: types.CallToolResult) -> str:
    """The text an error answer carries: its text content, else its structured content."""
    text = "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))
    if text or result.structured_content is None:
        return text
    return str(result.structured_content)
