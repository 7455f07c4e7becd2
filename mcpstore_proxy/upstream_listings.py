"""An upstream's listings (tools, prompts, resources, resource templates), every page of each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from mcp import types

from mcpstore_proxy.relay import ListKind

__all__ = ["Listing", "list_every"]

Listing = list[types.Tool] | list[types.Prompt] | list[types.Resource] | list[types.ResourceTemplate]

_ItemT = TypeVar("_ItemT")
_PageT = TypeVar("_PageT", bound=types.PaginatedResult)


async def list_every(
    fetch: Callable[[types.ClientRequest], Awaitable[dict[str, Any]]],
    capabilities: types.ServerCapabilities | None,
    kind: ListKind,
) -> Listing:
    """Every item of the listing `kind` (following pagination), each page fetched with `fetch` (its raw result);
    empty when the upstream lacks the capability.

    Raises:
        MCPError: the upstream's error.
        pydantic.ValidationError: a page that is not a listing of `kind`.
    """
    offered = capabilities or types.ServerCapabilities()
    if kind == "tools" and offered.tools:
        return await _paginate(fetch, types.ListToolsRequest, types.ListToolsResult, lambda page: page.tools)
    if kind == "prompts" and offered.prompts:
        return await _paginate(fetch, types.ListPromptsRequest, types.ListPromptsResult, lambda page: page.prompts)
    if kind == "resources" and offered.resources:
        return await _paginate(
            fetch, types.ListResourcesRequest, types.ListResourcesResult, lambda page: page.resources
        )
    if kind == "templates" and offered.resources:
        return await _paginate(
            fetch,
            types.ListResourceTemplatesRequest,
            types.ListResourceTemplatesResult,
            lambda page: page.resource_templates,
        )
    return []


async def _paginate(
    fetch: Callable[[types.ClientRequest], Awaitable[dict[str, Any]]],
    request_type: Callable[..., types.ClientRequest],
    page_type: type[_PageT],
    items_of: Callable[[_PageT], Sequence[_ItemT]],
) -> list[_ItemT]:
    """Every item across the pages of one listing."""
    items: list[_ItemT] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = page_type.model_validate(await fetch(request_type(params=params)), by_name=False)
        items.extend(items_of(page))
        cursor = page.next_cursor
        if not cursor:
            return items
