"""`subscriptions/listen` (2026-07-28): what upstreams say outside any call, for clients of the sessionless era.

A 2026-07-28 client has no connection to be told things on; it opens a
listen stream instead, naming what it wants: list changes, and updates of
resources it names. Each session key (a principal's own session, or an
explicit key) has one `ListenChannel`: the relay's owner for that key's
upstream sessions, turning their list changes and resource updates into
events on the key's bus, which every listen stream of that key filters and
delivers (the SDK's `ListenHandler`). The proxy's own catalog changes go to
every key's bus. A stream's resource subscriptions are made upstream, in the
key's sessions, for as long as the stream is open.
"""

from __future__ import annotations

from typing import Any, TypeVar

from mcp import MCPError, types
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from pydantic import BaseModel

__all__ = ["ListenChannel", "catalog_events"]

_ResultT = TypeVar("_ResultT", bound=BaseModel)


class ListenChannel:
    """The listen streams of one session key, as the relay sees its client."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self.handler = ListenHandler(self.bus)

    @property
    def capabilities(self) -> types.ClientCapabilities | None:
        return None

    @property
    def accepts_requests(self) -> bool:
        return False

    @property
    def is_modern(self) -> bool:
        return True

    async def notify(self, notification: types.ServerNotification) -> None:
        event = _event_of(notification)
        if event is not None:
            await self.bus.publish(event)

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        raise MCPError(types.INVALID_REQUEST, "a listen stream cannot be asked anything")

    async def publish(self, events: list[ServerEvent]) -> None:
        for event in events:
            await self.bus.publish(event)

    def close(self) -> None:
        self.handler.close()


def catalog_events(capabilities: types.ServerCapabilities) -> list[ServerEvent]:
    """The events that announce a change of the proxy's merged catalog."""
    events: list[ServerEvent] = [ToolsListChanged()]
    if capabilities.prompts is not None:
        events.append(PromptsListChanged())
    if capabilities.resources is not None:
        events.append(ResourcesListChanged())
    return events


def _event_of(notification: types.ServerNotification | Any) -> ServerEvent | None:
    if isinstance(notification, types.ToolListChangedNotification):
        return ToolsListChanged()
    if isinstance(notification, types.PromptListChangedNotification):
        return PromptsListChanged()
    if isinstance(notification, types.ResourceListChangedNotification):
        return ResourcesListChanged()
    if isinstance(notification, types.ResourceUpdatedNotification):
        return ResourceUpdated(uri=notification.params.uri)
    return None  # log entries and progress belong to a request, never to a listen stream
