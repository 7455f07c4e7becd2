"""The catalog: prefixed names, filters, session argument injection, collisions, and resource URI routing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from mcp import types

from mcpstore_proxy.catalog import Catalog, CatalogSource, PromptRoute, ResourceRoute, build_catalog, exposed_name
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import NameCollisionError, UnknownPromptError, UnknownResourceError, UnknownToolError
from tests.conversation import structured
from tests.inprocess import running_app
from tests.support import connect, fixture_server, wait_until, write_config


def tool(name: str, **properties: object) -> types.Tool:
    return types.Tool(name=name, input_schema={"type": "object", "properties": dict(properties)})


def source(
    upstream: str,
    *tools: types.Tool,
    prefix: str | None = None,
    prompts: Sequence[types.Prompt] = (),
    resources: Sequence[types.Resource] = (),
    templates: Sequence[types.ResourceTemplate] = (),
    offers_resources: bool = False,
    **options: object,
) -> CatalogSource:
    config = UpstreamConfig.model_validate({"command": "x", **options})
    return CatalogSource(
        upstream=upstream,
        prefix=upstream if prefix is None else prefix,
        config=config,
        tools=tools,
        prompts=prompts,
        resources=resources,
        templates=templates,
        offers_resources=offers_resources,
    )


def test_exposed_names_are_prefixed_and_kept_within_mcp_name_rules() -> None:
    assert exposed_name("browser", "navigate") == "browser_navigate"
    assert exposed_name("", "navigate") == "navigate"
    assert exposed_name("fs", "read/file name") == "fs_read_file_name"
    assert len(exposed_name("p", "x" * 300)) == 128


def catalog_of(*sources: CatalogSource, previous: Catalog | None = None, strict: bool = True) -> Catalog:
    return build_catalog(sources, session_argument="session_id", previous=previous, strict=strict)


def test_catalog_lists_tools_sorted_with_routes_back_to_their_upstream() -> None:
    catalog = catalog_of(source("zeta", tool("b"), tool("a")), source("alpha", tool("c")))
    assert [t.name for t in catalog.tools] == ["alpha_c", "zeta_a", "zeta_b"]
    route = catalog.tool("zeta_a")
    assert (route.upstream, route.tool) == ("zeta", "a")
    with pytest.raises(UnknownToolError):
        catalog.tool("a")


def test_a_listed_tool_is_found_by_its_exposed_name_with_the_schema_clients_see() -> None:
    catalog = catalog_of(source("zeta", tool("a", text={"type": "string"})), source("alpha", tool("c")))
    listed = catalog.listed_tool("zeta_a")
    assert listed is not None
    assert listed.input_schema["properties"]["text"] == {"type": "string"}
    assert "session_id" in listed.input_schema["properties"]  # as listed: with the proxy's session argument
    assert catalog.listed_tool("a") is None
    assert catalog.listed_tool("alpha_c") is catalog.tools[0]


def test_include_and_exclude_patterns_select_upstream_tools() -> None:
    catalog = catalog_of(
        source(
            "b",
            tool("navigate"),
            tool("click"),
            tool("install"),
            include_tools=["n*", "c*", "install"],
            exclude_tools=["install"],
        )
    )
    assert [t.name for t in catalog.tools] == ["b_click", "b_navigate"]


def test_session_argument_is_added_as_optional_and_under_the_alias_where_the_tool_declares_its_own() -> None:
    own = types.Tool(
        name="own",
        input_schema={"type": "object", "properties": {"session_id": {"type": "integer"}}, "required": ["session_id"]},
    )
    catalog = catalog_of(source("u", tool("plain", x={"type": "string"}), own))
    tools = {t.name: t for t in catalog.tools}
    assert tools["u_plain"].input_schema["properties"]["session_id"]["type"] == "string"
    assert tools["u_plain"].input_schema["properties"]["x"] == {"type": "string"}
    assert "required" not in tools["u_plain"].input_schema
    own_properties = tools["u_own"].input_schema["properties"]
    assert own_properties["session_id"] == {"type": "integer"}
    assert own_properties["mcpstore_session_id"]["type"] == "string"
    assert tools["u_own"].input_schema["required"] == ["session_id"]
    assert catalog.tool("u_own").declares_session_argument
    assert catalog.tool("u_own").session_argument == "mcpstore_session_id"
    assert not catalog.tool("u_plain").declares_session_argument
    assert catalog.tool("u_plain").session_argument == "session_id"


def test_the_session_argument_costs_a_listing_little_as_it_is_repeated_for_every_tool() -> None:
    catalog = catalog_of(source("u", tool("plain", x={"type": "string"})))
    added = {t.name: t for t in catalog.tools}["u_plain"].input_schema["properties"]["session_id"]
    assert added["type"] == "string"
    assert "session" in added["description"]
    assert "Optional" in added["description"]
    assert len(orjson.dumps(added)) <= 140  # a model reads it once per tool; it was 203 bytes


def test_a_tool_declaring_both_the_argument_and_the_alias_keeps_both_as_its_own() -> None:
    both = types.Tool(
        name="both",
        input_schema={"type": "object", "properties": {"session_id": {}, "mcpstore_session_id": {}}},
    )
    catalog = catalog_of(source("u", both))
    assert catalog.tools[0].input_schema == both.input_schema
    assert catalog.tool("u_both").session_argument is None


def test_a_collision_is_an_error_when_strict_and_the_first_owner_wins_later() -> None:
    with pytest.raises(NameCollisionError, match=r"'x' is exposed by both upstream 'one' .* and upstream 'two'"):
        catalog_of(source("one", tool("x"), prefix=""), source("two", tool("x"), prefix=""))

    before = catalog_of(source("two", prefix=""), source("one", tool("x"), prefix=""))
    after = catalog_of(
        source("two", tool("x"), tool("y"), prefix=""),
        source("one", tool("x"), prefix=""),
        previous=before,
        strict=False,
    )
    assert not after.offers_same_as(before)
    assert after.tool("x").upstream == "one"
    assert after.tool("y").upstream == "two"


def test_prompts_are_prefixed_and_route_to_their_original_name() -> None:
    prompt = types.Prompt(name="summarize")
    catalog = catalog_of(
        source("docs", prompts=[prompt]), source("bare", prefix="", prompts=[types.Prompt(name="greet")])
    )
    assert [p.name for p in catalog.prompts] == ["docs_summarize", "greet"]
    assert catalog.prompt("docs_summarize") == PromptRoute("docs", "summarize")
    assert catalog.prompt("greet") == PromptRoute("bare", "greet")
    with pytest.raises(UnknownPromptError):
        catalog.prompt("summarize")


def test_resource_uris_pass_through_until_two_upstreams_offer_the_same_one() -> None:
    shared = types.Resource(uri="file:///shared.txt", name="shared")
    catalog = catalog_of(
        source("a", resources=[shared, types.Resource(uri="a://only", name="only-a")], offers_resources=True),
        source("b", resources=[shared], offers_resources=True),
    )
    uris = [r.uri for r in catalog.resources]
    assert uris == ["a://only", "mcpstore:a:file:///shared.txt", "mcpstore:b:file:///shared.txt"]
    assert catalog.resource("a://only") == ResourceRoute("a", "a://only")
    assert catalog.resource("mcpstore:b:file:///shared.txt") == ResourceRoute("b", "file:///shared.txt")
    with pytest.raises(UnknownResourceError, match="offered by several upstreams"):
        catalog.resource("file:///shared.txt")
    assert catalog.exposed_uri("b", "file:///shared.txt") == "mcpstore:b:file:///shared.txt"
    assert catalog.exposed_uri("a", "a://only") == "a://only"


def test_reads_route_by_template_and_identical_templates_are_namespaced() -> None:
    catalog = catalog_of(
        source(
            "a", templates=[types.ResourceTemplate(uri_template="notes://{id}", name="note")], offers_resources=True
        ),
        source(
            "b",
            templates=[
                types.ResourceTemplate(uri_template="pages://{site}/{page}", name="page"),
                types.ResourceTemplate(uri_template="notes://{id}", name="note"),
            ],
            offers_resources=True,
        ),
    )
    assert catalog.resource("pages://docs/intro") == ResourceRoute("b", "pages://docs/intro")
    assert catalog.resource("mcpstore:a:notes://7") == ResourceRoute("a", "notes://7")
    assert sorted(t.uri_template for t in catalog.templates) == [
        "mcpstore:a:notes://{id}",
        "mcpstore:b:notes://{id}",
        "pages://{site}/{page}",
    ]
    assert catalog.template("mcpstore:b:notes://{id}") == ResourceRoute("b", "notes://{id}")
    with pytest.raises(UnknownResourceError, match="no upstream offers resource"):
        catalog.resource("other://x")


def test_a_lone_resource_upstream_gets_every_unlisted_uri() -> None:
    catalog = catalog_of(source("only", offers_resources=True), source("tools-only"))
    assert catalog.resource("anything://at/all") == ResourceRoute("only", "anything://at/all")


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
    async with running_app(config) as proxy, connect(proxy.url) as client:
        early = structured(await client.call_tool("whoami", {}))
        flag.touch()

        async def late_tool_listed() -> bool:
            return "only_late" in {t.name for t in (await client.list_tools()).tools}

        await wait_until(late_tool_listed, timeout=30, what="the late upstream's own tool")
        assert structured(await client.call_tool("whoami", {})) == early
        assert "is exposed by both upstream 'early'" in proxy.log
        assert "the later one stays hidden" in proxy.log
