"""Listings in the fast lane, in both eras: answered from each catalog's wire form exactly as the SDK answers them,
gzip-compressed for a client that accepts it, and left to the SDK whenever the lane cannot judge a request alone.

In process (`running_app`, the stateful fixture upstreams in memory), with plain HTTP to see what the wire carries;
`/admin/status`'s `fast_lane_calls` says which requests took the lane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, types
from mcp.client.sse import sse_client

from tests.inprocess import running_app
from tests.modern_requests import TO_THE_SDK, call, envelope, messages, post, post_listing
from tests.raw_session import JSON, RawSession, lane_calls, media_type, opened_session
from tests.support import fixture_server, write_config

pytestmark = pytest.mark.anyio

LISTINGS = ["tools/list", "prompts/list", "resources/list", "resources/templates/list"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state")})


@pytest.fixture
def two_upstreams(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"state": fixture_server("state"), "other": fixture_server("other")})


# Handshake era: in an open session.


async def test_listings_in_the_lane_are_what_the_sdk_lists_for_a_client_of_the_same_version(
    two_upstreams: Path,
) -> None:
    config = two_upstreams
    async with (
        running_app(config) as proxy,
        httpx2.AsyncClient(timeout=30) as http,
        Client(sse_client(f"http://127.0.0.1:{proxy.port}/sse"), mode="legacy", cache=None) as through_the_sdk,
    ):
        session = RawSession(http, proxy.url)
        await session.open()
        listings = {
            "tools/list": (types.ListToolsResult, through_the_sdk.list_tools),
            "prompts/list": (types.ListPromptsResult, through_the_sdk.list_prompts),
            "resources/list": (types.ListResourcesResult, through_the_sdk.list_resources),
            "resources/templates/list": (types.ListResourceTemplatesResult, through_the_sdk.list_resource_templates),
        }
        for number, (method, (result_type, sdk_listing)) in enumerate(listings.items()):
            for request_id in (number, f"list {number}"):
                listed = await session.post({"jsonrpc": "2.0", "id": request_id, "method": method})
                assert (listed.status_code, media_type(listed), listed.json()["id"]) == (200, JSON, request_id)
                assert result_type.model_validate(listed.json()["result"]) == await sdk_listing()
        listed = await session.post({"jsonrpc": "2.0", "id": 9, "method": "tools/list"})
        tools = {tool["name"] for tool in listed.json()["result"]["tools"]}
        assert {"state_echo", "other_echo"} <= tools
        assert await lane_calls(proxy, config) == 9


async def test_a_listing_goes_gzip_compressed_to_a_client_that_accepts_it_and_as_it_is_to_one_that_does_not(
    two_upstreams: Path,
) -> None:
    config = two_upstreams
    async with opened_session(config) as (proxy, _http, session):

        async def listing(request_id: int | str, accept_encoding: str) -> httpx2.Response:
            message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}
            return await session.post(message, **{"Accept-Encoding": accept_encoding})

        plain = await listing(1, "identity")
        assert "content-encoding" not in plain.headers
        for request_id in (2, "two", 2**70):
            listed = await listing(request_id, "br, gzip")
            assert (listed.status_code, listed.headers["content-encoding"], media_type(listed)) == (200, "gzip", JSON)
            assert listed.json() == {"jsonrpc": "2.0", "id": request_id, "result": plain.json()["result"]}
            assert int(listed.headers["content-length"]) < len(plain.content) / 4
        refused = await listing(3, "gzip;q=0")
        assert "content-encoding" not in refused.headers
        assert refused.json()["result"] == plain.json()["result"]
        assert await lane_calls(proxy, config) == 5


# 2026-07-28: sessionless requests.


@pytest.mark.parametrize("method", LISTINGS)
async def test_a_2026_listing_takes_the_lane_and_is_answered_exactly_as_the_sdk_answers_it(
    two_upstreams: Path, method: str
) -> None:
    config = two_upstreams
    async with running_app(config) as proxy:
        for request_id in (7, "seven"):
            lane = await post_listing(proxy.url, method, request_id=request_id)
            sdk = await post_listing(proxy.url, method, request_id=request_id, headers=TO_THE_SDK)
            assert (lane.status_code, lane.headers["content-type"], messages(lane)) == (
                sdk.status_code,
                sdk.headers["content-type"],
                messages(sdk),
            )
            assert messages(lane)[0]["id"] == request_id
        assert await lane_calls(proxy, config) == 2


async def test_a_2026_listing_takes_the_lane_from_a_client_that_may_be_asked_as_a_listing_asks_nothing(
    config: Path,
) -> None:
    askable = {"_meta": envelope(capabilities={"sampling": {}, "elicitation": {}, "roots": {}})}
    async with running_app(config) as proxy:
        lane = await post_listing(proxy.url, "tools/list", params=askable)
        sdk = await post_listing(proxy.url, "tools/list", params=askable, headers=TO_THE_SDK)
        assert await lane_calls(proxy, config) == 1
        called = await post(proxy.url, call("state_echo", {"text": "x"}, capabilities={"sampling": {}}))
        assert await lane_calls(proxy, config) == 1  # its calls are asked in rounds, by the SDK (see `rounds`)
    assert (lane.status_code, messages(lane)) == (sdk.status_code, messages(sdk))
    assert called.json()["result"]["structuredContent"] == {"result": "x"}


async def test_a_large_2026_listing_goes_gzip_compressed_to_a_client_that_accepts_it(two_upstreams: Path) -> None:
    config = two_upstreams
    async with running_app(config) as proxy:
        compressed = await post_listing(proxy.url, "tools/list", headers={"accept-encoding": "gzip"})
        plain = await post_listing(proxy.url, "tools/list", headers={"accept-encoding": "identity"})
        assert await lane_calls(proxy, config) == 2
    assert (compressed.headers["content-encoding"], "content-encoding" in plain.headers) == ("gzip", False)
    assert messages(compressed) == messages(plain)
    assert {"state_echo", "other_echo"} <= {tool["name"] for tool in messages(plain)[0]["result"]["tools"]}


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"_meta": envelope(), "cursor": "abc"}, {}),
        ({"_meta": envelope(progressToken="p")}, {}),
        ({"_meta": envelope()}, {"mcp-method": "prompts/list"}),  # header disagrees with the body
        ({"_meta": {**envelope(), "io.modelcontextprotocol/clientInfo": 7}}, {}),
        ({"_meta": {**envelope(), "io.modelcontextprotocol/protocolVersion": "2025-11-25"}}, {}),
        ({}, {}),
    ],
    ids=[
        "cursor",
        "progress-token",
        "method-header-mismatch",
        "malformed-client-info",
        "older-version-in-envelope",
        "no-envelope",
    ],
)
async def test_a_2026_listing_the_lane_cannot_judge_alone_is_the_sdks_and_answered_as_it_answers_it(
    config: Path, params: dict[str, Any], headers: dict[str, str]
) -> None:
    async with running_app(config) as proxy:
        await post_listing(proxy.url, "tools/list")  # one the lane takes first: what it remembers lets no other in
        assert await lane_calls(proxy, config) == 1
        answered = await post_listing(proxy.url, "tools/list", params=params, headers=headers)
        reference = await post_listing(proxy.url, "tools/list", params=params, headers=headers | TO_THE_SDK)
        assert await lane_calls(proxy, config) == 1
    assert (answered.status_code, messages(answered)) == (reference.status_code, messages(reference))


async def test_a_2026_listing_in_the_lane_needs_a_token_and_lists_for_the_tokens_principal(tmp_path: Path) -> None:
    alice, operator = "alice-token-0123456789", "operator-token-0123456789"
    tokens = [{"token": alice, "principal": "alice"}]
    config = write_config(tmp_path, {"state": fixture_server("state")}, auth={"tokens": tokens}, admin_token=operator)
    async with running_app(config) as proxy:
        anonymous = await post_listing(proxy.url, "tools/list")
        listed = await post_listing(proxy.url, "tools/list", headers={"authorization": f"Bearer {alice}"})
        assert await lane_calls(proxy, config) == 1
    assert anonymous.status_code == 401
    assert "state_echo" in {tool["name"] for tool in messages(listed)[0]["result"]["tools"]}
