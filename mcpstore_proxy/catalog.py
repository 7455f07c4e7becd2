"""The merged tool list every client sees, and the route from each exposed name to its upstream.

Each upstream's tools are exposed as `{prefix}_{tool}` (bare `tool` when the
prefix is empty), sorted by exposed name. Every exposed tool gains an optional
string property, the session argument (`session_id` by default), unless the
upstream tool already declares one of that name, in which case the tool is
left untouched and the argument is forwarded to it as is.

Two upstreams exposing the same name is a collision. At start-up it is an error
naming both sources; after that, the tool that claimed the name first keeps it,
and the later one stays hidden with a warning.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from mcp import types

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import NameCollisionError, UnknownToolError

__all__ = ["CatalogSource", "ToolCatalog", "ToolRoute", "exposed_name"]

logger = logging.getLogger(__name__)

MAX_NAME_LENGTH: Final = 128
_INVALID_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class ToolRoute:
    """Where an exposed tool name leads."""

    upstream: str
    tool: str
    declares_session_argument: bool
    """The upstream tool has its own property named like our session argument; it is forwarded, not read."""


@dataclass(frozen=True, slots=True)
class CatalogSource:
    """One upstream's contribution: its exposed-name prefix and the tools it currently offers."""

    upstream: str
    prefix: str
    config: UpstreamConfig
    tools: Sequence[types.Tool]


def exposed_name(prefix: str, tool: str) -> str:
    """`{prefix}_{tool}`, kept within MCP's 128 characters of `[A-Za-z0-9_.-]`."""
    name = f"{prefix}_{tool}" if prefix else tool
    return _INVALID_NAME_CHARACTERS.sub("_", name)[:MAX_NAME_LENGTH]


def is_tool_selected(config: UpstreamConfig, tool: str) -> bool:
    if config.include_tools is not None and not any(fnmatch.fnmatchcase(tool, p) for p in config.include_tools):
        return False
    return not any(fnmatch.fnmatchcase(tool, pattern) for pattern in config.exclude_tools)


class ToolCatalog:
    """The aggregated, prefixed tool list and its routing table; rebuilt whenever an upstream's tools change."""

    def __init__(self, session_argument: str) -> None:
        self._session_argument = session_argument
        self._tools: list[types.Tool] = []
        self._routes: dict[str, ToolRoute] = {}

    def __repr__(self) -> str:
        upstreams = sorted({route.upstream for route in self._routes.values()})
        return f"<ToolCatalog {len(self._routes)} tools from {len(upstreams)} upstreams>"

    @property
    def tools(self) -> list[types.Tool]:
        return self._tools

    def route(self, name: str) -> ToolRoute:
        """Raises UnknownToolError when no exposed tool is called `name`."""
        route = self._routes.get(name)
        if route is None:
            raise UnknownToolError(f"Unknown tool: {name!r}; call tools/list for the tools this proxy exposes")
        return route

    def rebuild(self, sources: Sequence[CatalogSource], *, strict: bool) -> bool:
        """Recompute the catalog from every upstream's current tools; returns whether it changed.

        Raises:
            NameCollisionError: `strict` and two upstreams expose the same name.
        """
        claimed: dict[str, tuple[ToolRoute, types.Tool]] = {}
        collisions: list[str] = []
        # Earlier owners of a name are offered it first, so a later change never steals a name.
        for source in sorted(sources, key=lambda s: 0 if self._owns_any(s) else 1):
            for tool in source.tools:
                if not is_tool_selected(source.config, tool.name):
                    continue
                name = exposed_name(source.prefix, tool.name)
                held = claimed.get(name)
                if held is not None and held[0].upstream != source.upstream:
                    collisions.append(
                        f"tool name '{name}' is exposed by both upstream '{held[0].upstream}' "
                        f"(tool '{held[0].tool}') and upstream '{source.upstream}' (tool '{tool.name}')"
                    )
                    continue
                if held is not None:
                    continue
                claimed[name] = self._expose(source.upstream, name, tool)
        if collisions and strict:
            more = f" (and {len(collisions) - 1} more colliding names)" if len(collisions) > 1 else ""
            raise NameCollisionError(
                f"{collisions[0]}{more}; give one of them a distinct 'prefix', or exclude the tool with 'exclude_tools'"
            )
        for message in collisions:
            logger.warning("%s; the later one stays hidden", message)
        names = sorted(claimed)
        routes = {name: claimed[name][0] for name in names}
        tools = [claimed[name][1] for name in names]
        changed = routes != self._routes or tools != self._tools
        self._routes, self._tools = routes, tools
        return changed

    def _owns_any(self, source: CatalogSource) -> bool:
        return any(route.upstream == source.upstream for route in self._routes.values())

    def _expose(self, upstream: str, name: str, tool: types.Tool) -> tuple[ToolRoute, types.Tool]:
        schema = dict(tool.input_schema)
        properties = cast(dict[str, Any], schema.get("properties") or {})
        declares = self._session_argument in properties
        route = ToolRoute(upstream=upstream, tool=tool.name, declares_session_argument=declares)
        if not declares:
            schema["properties"] = {**properties, self._session_argument: _session_property()}
        return route, tool.model_copy(update={"name": name, "input_schema": schema})


def _session_property() -> Mapping[str, Any]:
    return {
        "type": "string",
        "description": (
            "Optional. Names a persistent session: calls with the same name share the upstream's state, "
            "across connections. Omit it to use this connection's own session."
        ),
    }
