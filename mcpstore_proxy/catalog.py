"""What clients see of the upstreams: merged tools, prompts, resources and templates, and the routes back.

Names. Tools and prompts are exposed as `{prefix}_{name}` (bare `name` when the
prefix is empty), sorted, kept within MCP's 128 characters of `[A-Za-z0-9_.-]`.
Every exposed tool gains an optional string property, the session argument
(`session_id` by default), unless the upstream tool declares one of that name:
then the tool is left untouched and the argument is forwarded to it as is.
Two upstreams exposing the same name is a collision: at start-up an error naming
both; later, the upstream that had the name first keeps it and the other's
stays hidden, with a warning. A tool that tool pinning withholds (see `pins`)
is not exposed either, but its name leads to the `ToolChangedError` saying why.

URIs. Resource URIs and template URIs pass through unchanged while only one
upstream offers them. When several do, each one's is exposed in the namespaced
form `mcpstore:{upstream}:{original}`, which routes to that upstream with the
original URI. A read is routed by namespaced form, then exact resource URI,
then the first upstream (in config order) whose template matches, and finally
to the only upstream offering resources, if there is just one.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, TypeVar, cast

from mcp import types
from mcp.shared.uri_template import UriTemplate

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import (
    NameCollisionError,
    ToolChangedError,
    UnknownPromptError,
    UnknownResourceError,
    UnknownToolError,
    did_you_mean,
)

__all__ = [
    "NAMESPACE_SCHEME",
    "Catalog",
    "CatalogSource",
    "PromptRoute",
    "ResourceRoute",
    "ToolRoute",
    "build_catalog",
    "exposed_name",
    "namespaced_uri",
]

logger = logging.getLogger(__name__)

MAX_NAME_LENGTH: Final = 128
NAMESPACE_SCHEME: Final = "mcpstore"
_INVALID_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class ToolRoute:
    """Where an exposed tool name leads."""

    upstream: str
    tool: str
    declares_session_argument: bool
    """The upstream tool has its own property named like our session argument; it is forwarded, not read."""
    session_argument: str | None = None
    """Where this tool's callers name a proxy session: our session argument, else (when the tool declares its own)
    the configured alias; None when the tool declares both."""


@dataclass(frozen=True, slots=True)
class PromptRoute:
    upstream: str
    prompt: str


@dataclass(frozen=True, slots=True)
class ResourceRoute:
    """Where a resource URI (or template) leads, and the URI the upstream knows it by."""

    upstream: str
    uri: str


@dataclass(frozen=True, slots=True)
class CatalogSource:
    """One upstream's contribution: its prefix, its selection rules, and what it currently offers."""

    upstream: str
    prefix: str
    config: UpstreamConfig
    tools: Sequence[types.Tool] = ()
    prompts: Sequence[types.Prompt] = ()
    resources: Sequence[types.Resource] = ()
    templates: Sequence[types.ResourceTemplate] = ()
    offers_resources: bool = False
    withheld: Mapping[str, str] = field(default_factory=dict[str, str])
    """Tools withheld by tool pinning: the upstream's tool name → why (see `pins`)."""


def exposed_name(prefix: str, name: str) -> str:
    """`{prefix}_{name}`, kept within MCP's 128 characters of `[A-Za-z0-9_.-]`."""
    full = f"{prefix}_{name}" if prefix else name
    return _INVALID_NAME_CHARACTERS.sub("_", full)[:MAX_NAME_LENGTH]


def namespaced_uri(upstream: str, uri: str) -> str:
    return f"{NAMESPACE_SCHEME}:{upstream}:{uri}"


def is_tool_selected(config: UpstreamConfig, tool: str) -> bool:
    if config.include_tools is not None and not any(fnmatch.fnmatchcase(tool, p) for p in config.include_tools):
        return False
    return not any(fnmatch.fnmatchcase(tool, pattern) for pattern in config.exclude_tools)


@dataclass(eq=False)
class Catalog:
    """One consistent view of every upstream's offer, and the routes from exposed names and URIs back to them."""

    tools: list[types.Tool] = field(default_factory=list[types.Tool])
    prompts: list[types.Prompt] = field(default_factory=list[types.Prompt])
    resources: list[types.Resource] = field(default_factory=list[types.Resource])
    templates: list[types.ResourceTemplate] = field(default_factory=list[types.ResourceTemplate])
    tool_routes: dict[str, ToolRoute] = field(default_factory=dict[str, ToolRoute])
    prompt_routes: dict[str, PromptRoute] = field(default_factory=dict[str, PromptRoute])
    resource_routes: dict[str, ResourceRoute] = field(default_factory=dict[str, ResourceRoute])
    template_routes: dict[str, ResourceRoute] = field(default_factory=dict[str, ResourceRoute])
    ambiguous_uris: frozenset[str] = frozenset()
    resource_upstreams: tuple[str, ...] = ()
    template_matchers: list[tuple[UriTemplate, ResourceRoute]] = field(
        default_factory=list[tuple[UriTemplate, ResourceRoute]]
    )
    """Unambiguous templates, parsed, in config order: how a concrete URI finds its upstream."""
    withheld_tools: dict[str, str] = field(default_factory=dict[str, str])
    """Exposed names of the tools that tool pinning withholds → why (the `ToolChangedError` message)."""

    def __repr__(self) -> str:
        return (
            f"<Catalog {len(self.tools)} tools, {len(self.prompts)} prompts, "
            f"{len(self.resources)} resources, {len(self.templates)} templates>"
        )

    def offers_same_as(self, other: Catalog) -> bool:
        """Whether a client listing both would see no difference."""
        return (self.tools, self.prompts, self.resources, self.templates) == (
            other.tools,
            other.prompts,
            other.resources,
            other.templates,
        )

    def listed_tool(self, name: str) -> types.Tool | None:
        """The tool listed as `name`, if any (by a name index made at the first lookup: the SDK asks for a tool's
        input schema on every 2026-07-28 call, and a catalog may list a thousand)."""
        return self._tools_by_name.get(name)

    @cached_property
    def _tools_by_name(self) -> dict[str, types.Tool]:
        return {tool.name: tool for tool in self.tools}

    def tool(self, name: str) -> ToolRoute:
        """Raises ToolChangedError when tool pinning withholds `name`; UnknownToolError when no exposed tool is
        called `name`."""
        route = self.tool_routes.get(name)
        if route is None:
            if name in self.withheld_tools:
                raise ToolChangedError(self.withheld_tools[name])
            hint = did_you_mean(name, self.tool_routes)
            raise UnknownToolError(f"Unknown tool: {name!r}{hint}; call tools/list for the tools this proxy exposes")
        return route

    def prompt(self, name: str) -> PromptRoute:
        """Raises UnknownPromptError when no exposed prompt is called `name`."""
        route = self.prompt_routes.get(name)
        if route is None:
            hint = did_you_mean(name, self.prompt_routes)
            raise UnknownPromptError(
                f"Unknown prompt: {name!r}{hint}; call prompts/list for the prompts this proxy exposes"
            )
        return route

    def resource(self, uri: str) -> ResourceRoute:
        """The upstream that serves `uri`; raises UnknownResourceError when none does."""
        namespaced = self._split_namespaced(uri)
        if namespaced is not None:
            return namespaced
        route = self.resource_routes.get(uri)
        if route is not None:
            return route
        if uri in self.ambiguous_uris:
            raise UnknownResourceError(
                f"resource {uri!r} is offered by several upstreams; use one of "
                + ", ".join(repr(exposed) for exposed, r in self.resource_routes.items() if r.uri == uri),
                uri=uri,
            )
        for template, template_route in self.template_matchers:
            if template.match(uri) is not None:
                return ResourceRoute(template_route.upstream, uri)
        if len(self.resource_upstreams) == 1:
            return ResourceRoute(self.resource_upstreams[0], uri)
        raise UnknownResourceError(
            f"no upstream offers resource {uri!r}; call resources/list or resources/templates/list for what exists",
            uri=uri,
        )

    def template(self, uri_template: str) -> ResourceRoute:
        """The upstream that owns the exposed template `uri_template` (for completion)."""
        route = self.template_routes.get(uri_template) or self._split_namespaced(uri_template)
        if route is None:
            raise UnknownResourceError(
                f"no upstream offers resource template {uri_template!r}; call resources/templates/list"
            )
        return route

    def exposed_uri(self, upstream: str, uri: str) -> str:
        """How clients know the upstream's `uri`: unchanged, or namespaced when several upstreams offer it."""
        return namespaced_uri(upstream, uri) if uri in self.ambiguous_uris else uri

    def _split_namespaced(self, uri: str) -> ResourceRoute | None:
        scheme, _, rest = uri.partition(":")
        if scheme != NAMESPACE_SCHEME:
            return None
        upstream, separator, original = rest.partition(":")
        if not separator or upstream not in self.resource_upstreams:
            raise UnknownResourceError(
                f"{uri!r} names no upstream that offers resources; "
                f"the form is {NAMESPACE_SCHEME}:<upstream>:<uri> with one of {list(self.resource_upstreams)}"
            )
        return ResourceRoute(upstream, original)


def build_catalog(
    sources: Sequence[CatalogSource],
    *,
    session_argument: str,
    session_argument_alias: str = "mcpstore_session_id",
    previous: Catalog | None,
    strict: bool,
) -> Catalog:
    """The catalog of `sources`, sorted and routed; `previous` keeps names with the upstream that had them.

    Raises:
        NameCollisionError: `strict` and two upstreams expose the same tool or prompt name.
    """
    collisions: list[str] = []
    previous_tool_owners = {n: r.upstream for n, r in previous.tool_routes.items()} if previous else {}
    previous_prompt_owners = {n: r.upstream for n, r in previous.prompt_routes.items()} if previous else {}
    tools = _claim(
        "tool",
        (
            (s.upstream, t.name, exposed_name(s.prefix, t.name), t)
            for s in sources
            for t in s.tools
            if is_tool_selected(s.config, t.name)
        ),
        previous_tool_owners,
        collisions,
    )
    prompts = _claim(
        "prompt",
        ((s.upstream, p.name, exposed_name(s.prefix, p.name), p) for s in sources for p in s.prompts),
        previous_prompt_owners,
        collisions,
    )
    if collisions and strict:
        more = f" (and {len(collisions) - 1} more colliding names)" if len(collisions) > 1 else ""
        raise NameCollisionError(
            f"{collisions[0]}{more}; give one of them a distinct 'prefix', or exclude the tool with 'exclude_tools'"
        )
    for message in collisions:
        logger.warning("%s; the later one stays hidden", message)

    catalog = Catalog(resource_upstreams=tuple(s.upstream for s in sources if s.offers_resources))
    for name in sorted(tools):
        upstream, original, tool = tools[name]
        catalog.tool_routes[name], exposed = _expose_tool(
            upstream, name, original, tool, (session_argument, session_argument_alias)
        )
        catalog.tools.append(exposed)
    for source in sources:
        for tool, reason in source.withheld.items():
            catalog.withheld_tools.setdefault(exposed_name(source.prefix, tool), reason)
    for name in sorted(prompts):
        upstream, original, prompt = prompts[name]
        catalog.prompt_routes[name] = PromptRoute(upstream, original)
        catalog.prompts.append(prompt.model_copy(update={"name": name}))
    _add_resources(catalog, sources)
    return catalog


_Item = TypeVar("_Item")


def _claim(
    kind: str,
    candidates: Iterable[tuple[str, str, str, _Item]],
    previous_owners: Mapping[str, str],
    collisions: list[str],
) -> dict[str, tuple[str, str, _Item]]:
    """Give each exposed name to one upstream: its previous owner if still offered, else the first in config order."""
    offered: dict[str, list[tuple[str, str, _Item]]] = {}
    for upstream, original, name, item in candidates:
        offered.setdefault(name, []).append((upstream, original, item))
    claimed: dict[str, tuple[str, str, _Item]] = {}
    for name, offers in offered.items():
        owner = previous_owners.get(name)
        offers.sort(key=lambda offer: offer[0] != owner)  # stable: config order otherwise
        winner = offers[0]
        claimed[name] = winner
        for upstream, original, _ in offers[1:]:
            if upstream != winner[0]:
                collisions.append(
                    f"{kind} name '{name}' is exposed by both upstream '{winner[0]}' ({kind} '{winner[1]}') "
                    f"and upstream '{upstream}' ({kind} '{original}')"
                )
    return claimed


def _expose_tool(
    upstream: str, name: str, original: str, tool: types.Tool, session_arguments: tuple[str, str]
) -> tuple[ToolRoute, types.Tool]:
    """The tool as clients see it: renamed, with our session argument added, or, where the upstream tool has a
    property of that name (FastMCP's own sessions, say), the configured alias, described as ours."""
    session_argument, alias = session_arguments
    schema = dict(tool.input_schema)
    properties = cast(dict[str, Any], schema.get("properties") or {})
    declares = session_argument in properties
    ours = alias if declares else session_argument
    if ours in properties:
        ours = None  # the tool declares both names: everything it is given is its own
    else:
        schema["properties"] = {**properties, ours: _session_property(session_argument if declares else None)}
    route = ToolRoute(upstream=upstream, tool=original, declares_session_argument=declares, session_argument=ours)
    return route, tool.model_copy(update={"name": name, "input_schema": schema})


def _add_resources(catalog: Catalog, sources: Sequence[CatalogSource]) -> None:
    uri_counts = Counter(uri for s in sources for uri in {r.uri for r in s.resources})
    template_counts = Counter(t for s in sources for t in {r.uri_template for r in s.templates})
    catalog.ambiguous_uris = frozenset(uri for uri, count in uri_counts.items() if count > 1) | frozenset(
        template for template, count in template_counts.items() if count > 1
    )
    for source in sources:
        for resource in source.resources:
            exposed = catalog.exposed_uri(source.upstream, resource.uri)
            catalog.resource_routes[exposed] = ResourceRoute(source.upstream, resource.uri)
            catalog.resources.append(resource.model_copy(update={"uri": exposed}))
        for template in source.templates:
            exposed = catalog.exposed_uri(source.upstream, template.uri_template)
            route = ResourceRoute(source.upstream, template.uri_template)
            catalog.template_routes[exposed] = route
            catalog.templates.append(template.model_copy(update={"uri_template": exposed}))
            if exposed == template.uri_template:
                parsed = _parse_template(template.uri_template)
                if parsed is not None:
                    catalog.template_matchers.append((parsed, route))
    catalog.resources.sort(key=_by_uri)
    catalog.templates.sort(key=_by_template)


def _by_uri(resource: types.Resource) -> str:
    return resource.uri


def _by_template(template: types.ResourceTemplate) -> str:
    return template.uri_template


def _parse_template(uri_template: str) -> UriTemplate | None:
    try:
        return UriTemplate.parse(uri_template)
    except ValueError:
        logger.warning(
            "resource template %r is not a valid RFC 6570 template; reads will not route by it", uri_template
        )
        return None


SESSION_ARGUMENT_DESCRIPTION: Final = (
    "Optional: calls naming the same session share the upstream's state; omit it for this connection's own."
)
"""Kept short: it is listed with every tool, so a model reads it once per tool (a thousand tools, a thousand times)."""


def _session_property(shadowed: str | None = None) -> Mapping[str, Any]:
    description = SESSION_ARGUMENT_DESCRIPTION
    if shadowed is not None:
        description += f" (The proxy's session; the tool's own '{shadowed}' is passed to it unchanged.)"
    return {"type": "string", "description": description}
