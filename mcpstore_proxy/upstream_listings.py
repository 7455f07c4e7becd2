"""An upstream's listings (tools, prompts, resources, resource templates), every page of each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from mcp import ClientSession, types

from mcpstore_proxy.relay import ListKind

__all__ = ["Listing", "list_every"]

Listing = list[types.Tool] | list[types.Prompt] | list[types.Resource] | list[types.ResourceTemplate]

_ItemT = TypeVar("_ItemT")
_PageT = TypeVar("_PageT", bound=types.PaginatedResult)


async def list_every(client: ClientSession, capabilities: types.ServerCapabilities | None, kind: ListKind) -> Listing:
    """Every item of the listing `kind` (following pagination); empty when the upstream lacks the capability.

    Raises:
        MCPError: the upstream's error.
    """
    offered = capabilities or types.ServerCapabilities()
    if kind == "tools" and offered.tools:
        return await _paginate(lambda p: client.list_tools(params=p), lambda page: page.tools)
    if kind == "prompts" and offered.prompts:
        return await _paginate(lambda p: client.list_prompts(params=p), lambda page: page.prompts)
    if kind == "resources" and offered.resources:
        return await _paginate(lambda p: client.list_resources(params=p), lambda page: page.resources)
    if kind == "templates" and offered.resources:
        return await _paginate(lambda p: client.list_resource_templates(params=p), lambda page: page.resource_templates)
    return []


async def _paginate(
    fetch: Callable[[types.PaginatedRequestParams | None], Awaitable[_PageT]],
    items_of: Callable[[_PageT], Sequence[_ItemT]],
) -> list[_ItemT]:
    """Every item across the pages of one listing."""
    items: list[_ItemT] = []
    cursor: str | None = None
    while True:
        page = await fetch(types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        items.extend(items_of(page))
        cursor = page.next_cursor
        if not cursor:
            return items
