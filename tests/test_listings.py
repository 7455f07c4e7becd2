"""A catalog's listings are shaped once per method and protocol version, for the SDK's handlers and the lane alike,
and a replaced catalog's are shaped afresh."""

from __future__ import annotations

import gc
import gzip

import orjson
import pytest
from mcp import types

from mcpstore_proxy.catalog import Catalog
from mcpstore_proxy.listings import ShapedListings

pytestmark = pytest.mark.anyio

OLD, NEW = "2025-11-25", "2026-07-28"


def catalog_of(*names: str) -> Catalog:
    return Catalog(tools=[types.Tool(name=name, input_schema={"type": "object"}) for name in names])


async def test_the_sdks_result_is_shaped_once_per_catalog_method_and_version() -> None:
    listings, catalog = ShapedListings(), catalog_of("echo")
    shaped: list[str] = []

    async def shape(version: str) -> types.ListToolsResult:
        shaped.append(version)
        return types.ListToolsResult(tools=catalog.tools)

    first = await listings.result(catalog, "tools/list", OLD, lambda: shape(OLD))
    again = await listings.result(catalog, "tools/list", OLD, lambda: shape(OLD))
    await listings.result(catalog, "tools/list", NEW, lambda: shape(NEW))

    assert again is first
    assert shaped == [OLD, NEW]


def test_the_lanes_json_lists_the_catalog_and_is_made_once() -> None:
    listings, catalog = ShapedListings(), catalog_of("echo", "sleep")

    wire = listings.wire(catalog, "tools/list", OLD)

    assert [tool["name"] for tool in orjson.loads(wire.json)["tools"]] == ["echo", "sleep"]
    assert listings.wire(catalog, "tools/list", OLD) is wire


def test_a_large_listing_is_deflated_once_for_every_answer_and_a_small_one_is_not_compressed() -> None:
    listings = ShapedListings()
    large = listings.wire(catalog_of(*(f"tool_{number}" for number in range(100))), "tools/list", OLD)
    small = listings.wire(catalog_of("echo"), "tools/list", OLD)

    head = large.gzip_head
    assert head is not None
    assert large.gzip_head is head
    answer = orjson.loads(gzip.decompress(head.body(b'"seven"}')))
    assert answer == {"jsonrpc": "2.0", "id": "seven", "result": orjson.loads(large.json)}
    assert small.gzip_head is None


def test_a_replaced_catalog_is_listed_afresh_and_the_old_ones_shapes_are_let_go() -> None:
    listings = ShapedListings()
    old = catalog_of("echo")
    listings.wire(old, "tools/list", OLD)
    new = catalog_of("echo", "added")

    assert [tool["name"] for tool in orjson.loads(listings.wire(new, "tools/list", OLD).json)["tools"]] == [
        "echo",
        "added",
    ]
    del old
    gc.collect()
    assert len(listings._wire) == 1  # pyright: ignore[reportPrivateUsage]
