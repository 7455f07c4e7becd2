"""The two ways to reach a downstream client: the stream of one of its requests, or its connection's own stream.

Both are `ClientChannel`s for the relay (see `relay`). A 2026-07-28 client is reached only on its request's
stream, gets log entries only at the level its request opted in to, and is never sent a request (see `rounds`
for how it is asked instead).
"""

from __future__ import annotations

from typing import Any, TypeVar

from mcp import types
from mcp.server.connection import Connection, allowed_log_levels
from mcp.server.context import ServerRequestContext
from mcp.shared.message import ServerMessageMetadata
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

__all__ = ["ConnectionStream", "RequestStream"]

Context = ServerRequestContext[Any, Any]
_ResultT = TypeVar("_ResultT", bound=BaseModel)


class RequestStream:
    """The client behind one request, reached on that request's own stream."""

    def __init__(self, ctx: Context) -> None:
        self._session = ctx.session
        self._request_id = ctx.request_id
        self._is_modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        self._log_levels = allowed_log_levels(ctx.protocol_version, ctx.meta)

    @property
    def capabilities(self) -> types.ClientCapabilities | None:
        return self._session.client_capabilities

    @property
    def accepts_requests(self) -> bool:
        return self._session.can_send_request and not self._is_modern

    @property
    def is_modern(self) -> bool:
        return self._is_modern

    async def notify(self, notification: types.ServerNotification) -> None:
        if (
            isinstance(notification, types.LoggingMessageNotification)
            and notification.params.level not in self._log_levels
        ):
            return  # a 2026-07-28 client gets log entries only at the level its request opted in to
        await self._session.send_notification(notification, related_request_id=self._request_id)

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        return await self._session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=self._request_id)
        )


class ConnectionStream:
    """A client reached on its connection's standalone stream (the GET stream, or the stdio pipe)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @property
    def capabilities(self) -> types.ClientCapabilities | None:
        return self._connection.client_capabilities

    @property
    def accepts_requests(self) -> bool:
        return (
            self._connection.has_standalone_channel
            and self._connection.protocol_version not in MODERN_PROTOCOL_VERSIONS
        )

    async def notify(self, notification: types.ServerNotification) -> None:
        if (
            isinstance(notification, types.LoggingMessageNotification)
            and self._connection.protocol_version in MODERN_PROTOCOL_VERSIONS
        ):
            return  # 2026-07-28 has no connection-wide log delivery
        wire = notification.model_dump(by_alias=True, mode="json", exclude_none=True)
        await self._connection.notify(wire["method"], wire.get("params"))

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        return await self._connection.send_request(request, result_type=result_type)
