"""The merged tool list: prefixed names, filters, session argument injection, and collision handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import types

from mcpstore_proxy.catalog import CatalogSource, ToolCatalog, exposed_name
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import NameCollisionError, UnknownToolError
from tests.support import connect, fixture_server, running_proxy, structured, wait_until, write_config


def tool(name: str, **properties: object) -> types.Tool:
    return types.Tool(name=name, input_schema={"type": "object", "properties": dict(properties)})


def source(upstream: str, *tools: types.Tool, prefix: str | None = None, **options: object) -> CatalogSource:
    config = UpstreamConfig.model_validate({"command": "x", **options})
    return CatalogSource(upstream=upstream, prefix=upstream if prefix is None else prefix, config=config, tools=tools)


def test_exposed_names_are_prefixed_and_kept_within_mcp_name_rules() -> None:
    assert exposed_name("browser", "navigate") == "browser_navigate"
    assert exposed_name("", "navigate") == "navigate"
    assert exposed_name("fs", "read/file name") == "fs_read_file_name"
    assert len(exposed_name("p", "x" * 300)) == 128


def test_catalog_lists_tools_sorted_with_routes_back_to_their_upstream() -> None:
    catalog = ToolCatalog("session_id")
    catalog.rebuild([source("zeta", tool("b"), tool("a")), source("alpha", tool("c"))], strict=True)
    assert [t.name for t in catalog.tools] == ["alpha_c", "zeta_a", "zeta_b"]
    route = catalog.route("zeta_a")
    assert (route.upstream, route.tool) == ("zeta", "a")
    with pytest.raises(UnknownToolError):
        catalog.route("a")


def test_include_and_exclude_patterns_select_upstream_tools() -> None:
    catalog = ToolCatalog("session_id")
    catalog.rebuild(
        [
            source(
                "b",
                tool("navigate"),
                tool("click"),
                tool("install"),
                include_tools=["n*", "c*", "install"],
                exclude_tools=["install"],
            )
        ],
        strict=True,
    )
    assert [t.name for t in catalog.tools] == ["b_click", "b_navigate"]


def test_session_argument_is_added_as_optional_unless_the_tool_declares_it() -> None:
    catalog = ToolCatalog("session_id")
    own = types.Tool(
        name="own",
        input_schema={"type": "object", "properties": {"session_id": {"type": "integer"}}, "required": ["session_id"]},
    )
    catalog.rebuild([source("u", tool("plain", x={"type": "string"}), own)], strict=True)
    tools = {t.name: t for t in catalog.tools}
    assert tools["u_plain"].input_schema["properties"]["session_id"]["type"] == "string"
    assert tools["u_plain"].input_schema["properties"]["x"] == {"type": "string"}
    assert "required" not in tools["u_plain"].input_schema
    assert tools["u_own"].input_schema == own.input_schema
    assert catalog.route("u_own").declares_session_argument
    assert not catalog.route("u_plain").declares_session_argument


def test_a_collision_is_an_error_when_strict_and_the_first_owner_wins_later() -> None:
    catalog = ToolCatalog("session_id")
    with pytest.raises(NameCollisionError, match=r"'x' is exposed by both upstream 'one' .* and upstream 'two'"):
        catalog.rebuild([source("one", tool("x"), prefix=""), source("two", tool("x"), prefix="")], strict=True)

    catalog.rebuild([source("two", prefix=""), source("one", tool("x"), prefix="")], strict=True)
    changed = catalog.rebuild(
        [source("two", tool("x"), tool("y"), prefix=""), source("one", tool("x"), prefix="")], strict=False
    )
    assert changed
    assert catalog.route("x").upstream == "one"
    assert catalog.route("y").upstream == "two"


@pytest.mark.anyio
async def test_a_colliding_tool_from_an_upstream_that_comes_up_later_stays_hidden_with_a_warning(
    tmp_path: Path,
) -> None:
    flag = tmp_path / "late-ready"
    config = write_config(
        tmp_path,
        {
            "early": fixture_server("early", prefix=""),
            "late": fixture_server("late", "--fail-until", str(flag), "--extra-tool", "only_late", prefix=""),
        },
    )
    async with running_proxy(config) as proxy, connect(proxy.url) as client:
        early_pid = structured(await client.call_tool("whoami", {}))
        flag.touch()

        async def late_tool_listed() -> bool:
            return "only_late" in {t.name for t in (await client.list_tools()).tools}

        await wait_until(late_tool_listed, timeout=30, what="the late upstream's own tool")
        assert structured(await client.call_tool("whoami", {})) == early_pid
        assert "is exposed by both upstream 'early'" in proxy.log
        assert "the later one stays hidden" in proxy.log
