"""The remote backend: the SDK against a running `mcpstore-proxy`.

Control operations go to the proxy's admin API; tool calls go over MCP to its
`/mcp` endpoint, one connection per named session, carrying the session name
and the agent id as headers (`X-MCPStore-Session`, `X-MCPStore-Agent`). A call
outside any session uses a fresh connection for that one call, which is what an
ephemeral session is. The proxy's error types come back as the same exceptions
the embedded backend raises.

Which exposed tool a name means is asked of the admin API once and remembered
until this backend changes services or sessions (or the proxy no longer knows
the remembered name), so a call is one MCP round trip. Calls in a session that
must already be open carry `X-MCPStore-Existing-Session`, so the proxy refuses
them when that session has closed or expired instead of opening it afresh.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar, cast
from urllib.parse import quote

import anyio
import anyio.abc
import httpx2
from mcp import MCPError, types
from pydantic import BaseModel

from mcpstore_proxy import errors
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.control import ServiceInfo, SessionInfo, ToolInfo, service_entries
from mcpstore_proxy.errors import ProxyError, UpstreamError
from mcpstore_proxy.relay import SessionRelay
from mcpstore_proxy.server import AGENT_HEADER, EXISTING_SESSION_HEADER
from mcpstore_proxy.upstream import UpstreamSession

__all__ = ["RemoteBackend", "remote_backend"]

_HTTP_SECONDS: Final = 30.0
_HTTP_TIMEOUT: Final = httpx2.Timeout(_HTTP_SECONDS, read=330.0)
_CONNECT_SECONDS: Final = 60.0


@asynccontextmanager
async def remote_backend(
    url: str, *, token: str | None = None, session_header: str = "X-MCPStore-Session"
) -> AsyncGenerator[RemoteBackend]:
    """Talk to the proxy at `url` (its base URL, or its `/mcp` endpoint); leaving closes every connection."""
    base = url.rstrip("/").removesuffix("/mcp")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(base_url=base, headers=headers, timeout=_HTTP_TIMEOUT) as http,
        anyio.create_task_group() as tg,
    ):
        backend = RemoteBackend(base, http, tg, token=token, session_header=session_header)
        try:
            yield backend
        finally:
            with anyio.CancelScope(shield=True):
                await backend.aclose()
            tg.cancel_scope.cancel()


class RemoteBackend:
    """`Backend` over a running proxy's admin API and MCP endpoint."""

    def __init__(
        self,
        base_url: str,
        http: httpx2.AsyncClient,
        task_group: anyio.abc.TaskGroup,
        *,
        token: str | None,
        session_header: str,
    ) -> None:
        self._base_url = base_url
        self._http = http
        self._task_group = task_group
        self._token = token
        self._session_header = session_header
        self._connections: dict[tuple[str, str, bool], UpstreamSession] = {}
        self._resolved: dict[tuple[str, str | None, str], str] = {}

    def __repr__(self) -> str:
        return f"<RemoteBackend {self._base_url}, {len(self._connections)} session connections>"

    # Services.

    async def add_services(self, agent: str, payload: Mapping[str, Any]) -> list[ServiceInfo]:
        self._resolved.clear()
        return _models(ServiceInfo, await self._admin("POST", "/services", agent, json=dict(payload)))

    async def update_services(self, agent: str, payload: Mapping[str, Any]) -> list[ServiceInfo]:
        self._resolved.clear()
        return [
            ServiceInfo.model_validate(await self._admin("PUT", f"/services/{_part(name)}", agent, json=entry))
            for name, entry in service_entries(payload).items()
        ]

    async def remove_service(self, agent: str, name: str) -> None:
        self._resolved.clear()
        await self._admin("DELETE", f"/services/{_part(name)}", agent)

    async def restart_service(self, agent: str, name: str) -> ServiceInfo:
        self._resolved.clear()
        return ServiceInfo.model_validate(await self._admin("POST", f"/services/{_part(name)}/restart", agent))

    async def wait_service(self, agent: str, name: str, timeout_seconds: float) -> ServiceInfo:
        path = f"/services/{_part(name)}/wait"
        # The proxy answers when the wait ends, which may be later than a usual read timeout.
        timeout = httpx2.Timeout(_HTTP_SECONDS, read=timeout_seconds + _HTTP_SECONDS)
        answer = await self._admin("POST", path, agent, params={"timeout": timeout_seconds}, timeout=timeout)
        return ServiceInfo.model_validate(answer)

    async def list_services(self, agent: str) -> list[ServiceInfo]:
        return _models(ServiceInfo, await self._admin("GET", "/services", agent))

    async def service_status(self, agent: str, name: str) -> ServiceInfo:
        return ServiceInfo.model_validate(await self._admin("GET", f"/services/{_part(name)}", agent))

    # Tools.

    async def list_tools(self, agent: str, session: str | None = None) -> list[ToolInfo]:
        params = {"session": session} if session is not None else {}
        return _models(ToolInfo, await self._admin("GET", "/tools", agent, params=params))

    async def call_tool(
        self, agent: str, session: str | None, name: str, arguments: Mapping[str, Any] | None, opens: bool = False
    ) -> types.CallToolResult:
        remembered = self._resolved.get((agent, session, name))
        exposed = remembered or await self._resolve(agent, session, name, opens)
        try:
            return await self._call(agent, session, exposed, arguments, existing=not opens)
        except errors.UnknownToolError:
            if remembered is None:
                raise
        # The remembered name is gone (a service changed through another client): resolve it again, once.
        self._resolved.clear()
        exposed = await self._resolve(agent, session, name, opens)
        return await self._call(agent, session, exposed, arguments, existing=not opens)

    async def _resolve(self, agent: str, session: str | None, name: str, opens: bool) -> str:
        if opens and session is not None:
            await self._admin("PUT", f"/sessions/{_part(session)}", agent)  # a GET never changes state: open first
        params = {"name": name, **({"session": session} if session is not None else {})}
        tool = ToolInfo.model_validate(await self._admin("GET", "/tools/resolve", agent, params=params))
        self._resolved[(agent, session, name)] = tool.name
        return tool.name

    async def _call(
        self, agent: str, session: str | None, exposed: str, arguments: Mapping[str, Any] | None, *, existing: bool
    ) -> types.CallToolResult:
        if session is not None:
            connection = self._connection(agent, session, existing)
            return types.CallToolResult.model_validate(await _translated(connection.call_tool(exposed, arguments)))
        connection = self._new_connection(agent, None, existing=False)
        try:
            return types.CallToolResult.model_validate(await _translated(connection.call_tool(exposed, arguments)))
        finally:
            connection.close_soon()

    # Sessions.

    async def open_session(self, agent: str, session: str) -> SessionInfo:
        self._resolved.clear()  # a reopened session binds afresh
        return SessionInfo.model_validate(await self._admin("PUT", f"/sessions/{_part(session)}", agent))

    async def find_session(self, agent: str, session: str) -> SessionInfo | None:
        try:
            return await self.session_info(agent, session)
        except errors.SessionClosedError:
            return None

    async def list_sessions(self, agent: str) -> list[SessionInfo]:
        return _models(SessionInfo, await self._admin("GET", "/sessions", agent))

    async def session_info(self, agent: str, session: str) -> SessionInfo:
        return SessionInfo.model_validate(await self._admin("GET", f"/sessions/{_part(session)}", agent))

    async def bind_service(self, agent: str, session: str, service: str) -> SessionInfo:
        self._resolved.clear()
        path = f"/sessions/{_part(session)}/bind"
        return SessionInfo.model_validate(await self._admin("POST", path, agent, json={"service": service}))

    async def extend_session(self, agent: str, session: str, seconds: float) -> SessionInfo:
        path = f"/sessions/{_part(session)}/extend"
        return SessionInfo.model_validate(await self._admin("POST", path, agent, json={"seconds": seconds}))

    async def restart_session(self, agent: str, session: str) -> SessionInfo:
        self._resolved.clear()
        return SessionInfo.model_validate(await self._admin("POST", f"/sessions/{_part(session)}/restart", agent))

    async def clear_cache(self, agent: str, session: str) -> SessionInfo:
        self._resolved.clear()
        return SessionInfo.model_validate(await self._admin("POST", f"/sessions/{_part(session)}/clear-cache", agent))

    async def close_session(self, agent: str, session: str) -> None:
        self._resolved.clear()
        for existing in (True, False):
            connection = self._connections.pop((agent, session, existing), None)
            if connection is not None:
                await connection.aclose()
        await self._admin("DELETE", f"/sessions/{_part(session)}", agent)

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        async with anyio.create_task_group() as tg:
            for connection in connections:
                tg.start_soon(connection.aclose)

    # Plumbing.

    def _connection(self, agent: str, session: str, existing: bool) -> UpstreamSession:
        connection = self._connections.get((agent, session, existing))
        if connection is None or connection.is_closing:
            connection = self._new_connection(agent, session, existing=existing)
            self._connections[(agent, session, existing)] = connection
        return connection

    def _new_connection(self, agent: str, session: str | None, *, existing: bool) -> UpstreamSession:
        headers = {AGENT_HEADER: agent} if agent else {}
        if session is not None:
            headers[self._session_header] = session
        if existing:
            headers[EXISTING_SESSION_HEADER] = "1"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        config = UpstreamConfig(url=f"{self._base_url}/mcp", headers=headers, transport="streamable-http")
        connection = UpstreamSession(
            "proxy", config, start_timeout_seconds=_CONNECT_SECONDS, relay=SessionRelay("proxy"), label=session or ""
        )
        self._task_group.start_soon(connection.run)
        return connection

    async def _admin(
        self,
        method: str,
        path: str,
        agent: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: httpx2.Timeout | None = None,
    ) -> Any:
        query = {**(params or {}), **({"agent": agent} if agent else {})}
        # The admin API wants a JSON body on every POST and PUT (so that no web page can forge one).
        body = dict(json or {}) if method in ("POST", "PUT") else None
        try:
            response = await self._http.request(
                method, f"/admin{path}", json=body, params=query, timeout=timeout or _HTTP_TIMEOUT
            )
        except httpx2.TransportError as error:
            raise ProxyError(
                f"cannot reach the proxy at {self._base_url}: {error} (is `mcpstore-proxy serve` running?)"
            ) from None
        try:
            answer: Any = response.json() if response.content else None
        except ValueError:
            answer = {"error": {"message": f"HTTP {response.status_code}: {response.text[:200]}"}}
        if response.is_success:
            return answer
        raise _error_from(response.status_code, answer)


def _error_from(status: int, body: Any) -> ProxyError:
    document = cast(dict[str, Any], body) if isinstance(body, dict) else {}
    detail = cast(dict[str, Any], document.get("error") or {})
    message = str(detail.get("message") or f"the proxy answered HTTP {status}")
    named = _named_error(detail.get("type"), message, str(detail.get("upstream", "")), detail.get("detail"))
    return named or ProxyError(message)


def _named_error(kind_name: Any, message: str, upstream: str = "", detail: Any = None) -> ProxyError | None:
    """Our exception of the type the proxy named, if it named one of ours."""
    kind = getattr(errors, str(kind_name), None)
    if not (isinstance(kind, type) and issubclass(kind, ProxyError)):
        return None
    if issubclass(kind, UpstreamError):
        return kind(upstream, message, detail=str(detail) if detail else None)
    if issubclass(kind, errors.AuthenticationError):
        return kind(message, reason=None)
    return kind(message)


async def _translated(call: Any) -> dict[str, Any]:
    """The proxy's wire errors as the exceptions the embedded backend raises."""
    try:
        return cast(dict[str, Any], await call)
    except MCPError as error:
        data: Any = error.error.data
        detail = cast(dict[str, Any], data) if isinstance(data, dict) else {}
        named = _named_error(detail.get("type"), error.message, str(detail.get("upstream", "")))
        if named is not None:
            raise named from None
        raise


def _part(segment: str) -> str:
    return quote(segment, safe="")


_ModelT = TypeVar("_ModelT", bound=BaseModel)


def _models(model: type[_ModelT], items: Any) -> list[_ModelT]:
    return [model.model_validate(item) for item in cast(list[Any], items)]
