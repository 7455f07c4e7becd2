"""The control operations behind the SDK and the admin API, and the JSON shapes they return.

Both the embedded SDK and the HTTP admin API call these, so a service added,
a session extended or a tool resolved behaves the same whichever way it came.
Everything is scoped by agent (`""` is the store's scope) and sessions are
named within their scope.

Tool names resolve the way MCPStore users expect: the upstream's own name when
it is unambiguous among the session's bound services (or, with none bound,
among every service the scope sees), else the proxy's prefixed name. An unknown
name of a tool, service, session or agent is answered with the closest real ones.

The service operations themselves (adding, updating, removing, restarting and
waiting, with their policy and conflict checks) are `service_control`'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Set
from typing import Any, cast

from mcp import types
from pydantic import BaseModel

from mcpstore_proxy.catalog import ToolRoute
from mcpstore_proxy.errors import AmbiguousToolError, SessionClosedError, UnknownToolError, did_you_mean
from mcpstore_proxy.keys import SessionKey, checked_session_name
from mcpstore_proxy.principals import Principal
from mcpstore_proxy.records import SessionRecord
from mcpstore_proxy.registry import ServicePolicy
from mcpstore_proxy.service_control import ServiceControl, service_entries
from mcpstore_proxy.status import ServiceInfo

__all__ = [
    "Control",
    "ServiceInfo",
    "ServicePolicy",
    "SessionInfo",
    "ToolInfo",
    "resolve_tool_name",
    "service_entries",
]


class ToolInfo(BaseModel):
    name: str
    """The proxy's (prefixed) name, unique in the scope."""
    service: str
    tool: str
    """The upstream's own name."""
    description: str | None
    input_schema: dict[str, Any]
    """The upstream's schema, without the proxy's session argument."""


class SessionInfo(BaseModel):
    session_id: str
    agent_id: str | None
    is_active: bool
    created_at: dt.datetime
    last_active: dt.datetime
    expires_at: dt.datetime
    expires_in_seconds: float
    bound_services: list[str]
    service_count: int
    tool_count: int
    tools: list[str]
    connection_status: dict[str, str]


class Control(ServiceControl):
    """Service (see `ServiceControl`), session and tool operations over a running engine, for one principal.

    Sessions are the principal's own: the same session id from another principal is another session.
    """

    def acting_for(self, principal: Principal) -> Control:
        """The same operations, for another principal."""
        return Control(self.engine, policy=self._policy, principal=principal, shows_details=self._shows_details)

    def with_details(self, shows_details: bool) -> Control:
        """The same operations, with the failure details that only operators see (an upstream's stderr) or not."""
        return Control(self.engine, policy=self._policy, principal=self.principal, shows_details=shows_details)

    # Tools.

    async def list_tools(self, agent: str, session: str | None = None, *, all_services: bool = False) -> list[ToolInfo]:
        """The tools the scope sees, or, in a session with bound services, those services' tools."""
        key = self._key(agent, session)
        services = set[str]() if all_services else self._bound(key)
        catalog = self.engine.catalog_for(key)
        tools: list[ToolInfo] = []
        for tool in catalog.tools:
            route = catalog.tool(tool.name)
            if services and route.upstream not in services:
                continue
            tools.append(self._tool_info(tool, route))
        return tools

    async def resolve_tool(self, agent: str, session: str | None, name: str, *, opens: bool = False) -> ToolInfo:
        """The tool `name` means in this scope and session (see `resolve_tool_name`).

        Raises:
            SessionClosedError: `session` is closed (or was never opened), unless `opens`, which opens it.
        """
        key = self._key(agent, session)
        exposed, route = self._resolve(key, name, opens)
        tool = next(tool for tool in self.engine.catalog_for(key).tools if tool.name == exposed)
        return self._tool_info(tool, route)

    async def call_tool(
        self, agent: str, session: str | None, name: str, arguments: Mapping[str, Any] | None, opens: bool = False
    ) -> types.CallToolResult:
        key = self._key(agent, session)
        _, route = self._resolve(key, name, opens)
        return types.CallToolResult.model_validate(await self.engine.call_tool(key, route, dict(arguments or {})))

    def _resolve(self, key: SessionKey, name: str, opens: bool) -> tuple[str, ToolRoute]:
        if key.is_explicit and key not in self.engine.records:
            if not opens:
                self._require(key)
            self.engine.named.open(key)
        catalog = self.engine.catalog_for(key)
        try:
            exposed = resolve_tool_name(name, catalog.tool_routes, self._bound(key) or None)
        except UnknownToolError:
            # A tool withheld by pinning says so, by its exposed name or (where unambiguous) its own.
            withheld = [
                exposed for exposed in catalog.withheld_tools if exposed == name or exposed.endswith(f"_{name}")
            ]
            if len(withheld) == 1:
                catalog.tool(withheld[0])
            raise
        return exposed, catalog.tool_routes[exposed]

    # Sessions.

    async def open_session(self, agent: str, session: str) -> SessionInfo:
        key = self._key(agent, session)
        return self._session_info(self.engine.named.open(key))

    async def find_session(self, agent: str, session: str) -> SessionInfo | None:
        record = self.engine.records.get(self._key(agent, session))
        return self._session_info(record) if record is not None else None

    async def list_sessions(self, agent: str) -> list[SessionInfo]:
        agent = self._check_uses(agent)
        return [
            self._session_info(record)
            for record in self.engine.named.of_agent(agent)
            if record.key.principal == self.principal.name and record.key.is_explicit
        ]

    async def session_info(self, agent: str, session: str) -> SessionInfo:
        return self._session_info(self._record(agent, session))

    async def bind_service(self, agent: str, session: str, service: str) -> SessionInfo:
        key = self._key(agent, session)
        self._checked_service(key.agent, service)
        return self._session_info(await self.engine.named.bind(key, service))

    async def extend_session(self, agent: str, session: str, seconds: float) -> SessionInfo:
        self._record(agent, session)
        return self._session_info(self.engine.named.extend(self._key(agent, session), seconds))

    async def restart_session(self, agent: str, session: str) -> SessionInfo:
        self._record(agent, session)
        return self._session_info(await self.engine.named.restart(self._key(agent, session)))

    async def clear_cache(self, agent: str, session: str) -> SessionInfo:
        self._record(agent, session)
        key = self._key(agent, session)
        await self.engine.named.refresh(key)
        return self._session_info(self._record(agent, session))

    async def close_session(self, agent: str, session: str) -> None:
        await self.engine.end_session(self._key(agent, session))

    def _record(self, agent: str, session: str) -> SessionRecord:
        return self._require(self._key(agent, session))

    def _require(self, key: SessionKey) -> SessionRecord:
        """The record of the named session `key`.

        Raises:
            SessionClosedError: it is closed, expired or was never opened (naming the closest open ones).
        """
        try:
            return self.engine.records.require(key)
        except SessionClosedError as error:
            open_names = [
                record.key.name
                for record in self.engine.named.of_agent(key.agent)
                if record.key.principal == key.principal and record.key.is_explicit
            ]
            hint = did_you_mean(key.name, open_names)
            if not hint:
                raise
            raise SessionClosedError(f"{error.message}{hint}") from None

    def _session_info(self, record: SessionRecord) -> SessionInfo:
        key = record.key
        bound = set(record.bound)
        catalog = self.engine.catalog_for(key)
        tools = [name for name, route in catalog.tool_routes.items() if route.upstream in bound]
        return SessionInfo(
            session_id=key.name,
            agent_id=key.agent or None,
            is_active=key in self.engine.records,
            created_at=_utc(record.created_at),
            last_active=_utc(record.last_active),
            expires_at=_utc(record.expires_at),
            expires_in_seconds=self.engine.records.expires_in_seconds(record),
            bound_services=list(record.bound),
            service_count=len(record.bound),
            tool_count=len(tools),
            tools=tools,
            connection_status=self.engine.named.connection_status(key),
        )

    def _key(self, agent: str, session: str | None) -> SessionKey:
        agent = self._check_uses(agent)
        if session is None:
            return SessionKey.ephemeral(agent, self.principal.name)
        return SessionKey.explicit(checked_session_name(session, "a session id"), agent, self.principal.name)

    def _bound(self, key: SessionKey) -> set[str]:
        record = self.engine.records.get(key)
        return set(record.bound) if record is not None else set()

    def _tool_info(self, tool: types.Tool, route: ToolRoute) -> ToolInfo:
        schema = dict(tool.input_schema)
        if route.session_argument is not None:
            # The SDK names sessions itself: the proxy's argument (or its alias) is not the tool's.
            properties = dict(cast(dict[str, Any], schema.get("properties") or {}))
            properties.pop(route.session_argument, None)
            schema["properties"] = properties
        return ToolInfo(
            name=tool.name, service=route.upstream, tool=route.tool, description=tool.description, input_schema=schema
        )


def resolve_tool_name(name: str, routes: Mapping[str, ToolRoute], services: Set[str] | None) -> str:
    """The exposed tool `name` means: the upstream's own name when exactly one of `services` (None: any)
    has it, else the proxy's (prefixed) name.

    Raises:
        AmbiguousToolError: several of `services` have a tool called `name`.
        UnknownToolError: no tool matches.
    """
    matches = sorted(
        exposed
        for exposed, route in routes.items()
        if route.tool == name and (services is None or route.upstream in services)
    )
    if len(matches) == 1:
        return matches[0]
    if name in routes:
        return name
    if matches:
        raise AmbiguousToolError(
            f"tool {name!r} is offered by several services; call one of " + ", ".join(repr(m) for m in matches)
        )
    seen = {exposed: route for exposed, route in routes.items() if services is None or route.upstream in services}
    # The upstream's own names first: they are what a caller of the short name meant.
    hint = did_you_mean(name, [route.tool for route in seen.values()]) or did_you_mean(name, seen)
    raise UnknownToolError(f"no tool named {name!r} here{hint}; list_tools() shows the tools of this scope and session")


def _utc(epoch_seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_seconds, tz=dt.UTC)
