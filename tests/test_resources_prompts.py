"""Resources, templates, subscriptions, prompts and completion through the proxy.

The proxy runs in this process (`running_app`) with its upstreams in memory: the stateful fixture, and the
conformance fixture and the tools-only echo server as scripts served in memory (`MemoryUpstreams(scripts=...)`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import pytest
from mcp import MCPError, types
from mcp.types import INVALID_PARAMS

from bench import echo_server
from tests.conversation import subscribe, unsubscribe
from tests.fixtures.conformance_server import ConformanceFixtures
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import CONFORMANCE_SERVER, PROJECT_ROOT, connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio


ECHO_SERVER: Final = PROJECT_ROOT / "bench" / "echo_server.py"


def fixtures_in_memory() -> MemoryUpstreams:
    """Upstreams in memory, tests/fixtures/conformance_server.py and the tools-only bench/echo_server.py among
    them."""
    return MemoryUpstreams(
        scripts={CONFORMANCE_SERVER: lambda: ConformanceFixtures().build_server(), ECHO_SERVER: echo_server.build}
    )


def conformance(**options: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(CONFORMANCE_SERVER)], **options}


def text_contents(result: types.ReadResourceResult) -> list[str]:
    return [c.text for c in result.contents if isinstance(c, types.TextResourceContents)]


async def test_resources_pass_through_with_their_uris_unchanged(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"conf": conformance()})
    async with running_app(config, upstreams=fixtures_in_memory()) as proxy, connect(proxy.url) as client:
        uris = {r.uri for r in (await client.list_resources()).resources}
        assert {"test://static-text", "test://static-binary", "test://watched-resource"} <= uris
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        assert templates == ["test://template/{id}/data"]

        text = await client.read_resource("test://static-text")
        assert text_contents(text) == ["This is the content of the static text resource."]
        binary = await client.read_resource("test://static-binary")
        assert isinstance(binary.contents[0], types.BlobResourceContents)
        from_template = await client.read_resource("test://template/42/data")
        assert from_template.contents[0].uri == "test://template/42/data"
        assert "42" in text_contents(from_template)[0]

        await subscribe(client, "test://watched-resource")
        await unsubscribe(client, "test://watched-resource")


async def test_a_uri_offered_by_two_upstreams_is_namespaced_and_each_form_reaches_its_upstream(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"left": conformance(), "right": conformance()})
    async with running_app(config, upstreams=fixtures_in_memory()) as proxy, connect(proxy.url) as client:
        uris = {r.uri for r in (await client.list_resources()).resources}
        assert "mcpstore:left:test://static-text" in uris
        assert "mcpstore:right:test://static-text" in uris
        assert "test://static-text" not in uris

        result = await client.read_resource("mcpstore:right:test://static-text")
        assert result.contents[0].uri == "mcpstore:right:test://static-text"
        assert text_contents(result) == ["This is the content of the static text resource."]

        with pytest.raises(MCPError) as ambiguous:
            await client.read_resource("test://static-text")
        assert ambiguous.value.code == INVALID_PARAMS
        assert "mcpstore:left:test://static-text" in ambiguous.value.message

        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert templates == {"mcpstore:left:test://template/{id}/data", "mcpstore:right:test://template/{id}/data"}
        via_template = await client.read_resource("mcpstore:left:test://template/7/data")
        assert "7" in text_contents(via_template)[0]


async def test_an_unknown_resource_is_invalid_params(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"left": conformance(), "right": conformance()})
    async with running_app(config, upstreams=fixtures_in_memory()) as proxy, connect(proxy.url) as client:
        with pytest.raises(MCPError) as unknown:
            await client.read_resource("nothing://here")
        assert unknown.value.code == INVALID_PARAMS


async def test_prompts_are_prefixed_and_get_reaches_the_upstream_prompt(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"conf": conformance()})
    async with running_app(config, upstreams=fixtures_in_memory()) as proxy, connect(proxy.url) as client:
        names = {p.name for p in (await client.list_prompts()).prompts}
        assert {"conf_test_simple_prompt", "conf_test_prompt_with_arguments", "conf_test_prompt_with_image"} <= names

        prompt = await client.get_prompt("conf_test_prompt_with_arguments", {"arg1": "alpha", "arg2": "beta"})
        text = prompt.messages[0].content
        assert isinstance(text, types.TextContent)
        assert "alpha" in text.text
        assert "beta" in text.text
        image = await client.get_prompt("conf_test_prompt_with_image", {})
        assert any(isinstance(m.content, types.ImageContent) for m in image.messages)

        with pytest.raises(MCPError) as unknown:
            await client.get_prompt("test_simple_prompt", {})
        assert unknown.value.code == INVALID_PARAMS


async def test_completion_routes_by_exposed_prompt_name_and_template_uri(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"conf": conformance()})
    async with running_app(config, upstreams=fixtures_in_memory()) as proxy, connect(proxy.url) as client:
        by_prompt = await client.complete(
            types.PromptReference(type="ref/prompt", name="conf_test_prompt_with_arguments"),
            {"name": "arg1", "value": "par"},
        )
        assert by_prompt.completion.values == ["paris", "park", "party"]
        by_template = await client.complete(
            types.ResourceTemplateReference(type="ref/resource", uri="test://template/{id}/data"),
            {"name": "id", "value": "12"},
        )
        assert by_template.completion.values == ["123"]


async def test_a_resource_update_reaches_the_subscriber_of_an_isolated_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    updates: dict[str, list[str]] = {"alice": [], "bob": []}

    def collector(name: str) -> Any:
        async def on_message(message: object) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updates[name].append(message.params.uri)

        return on_message

    async with (
        running_app(config) as proxy,
        connect(proxy.url, message_handler=collector("alice")) as alice,
        connect(proxy.url, message_handler=collector("bob")) as bob,
    ):
        await subscribe(alice, "memo://a")
        await bob.call_tool("state_echo", {"text": "bob is here too"})
        await alice.call_tool("state_touch", {"uri": "memo://a"})
        await wait_until(lambda: updates["alice"] == ["memo://a"], what="alice's resource update")
        assert updates["bob"] == []


async def test_a_shared_upstreams_resource_update_reaches_every_subscriber_until_it_unsubscribes(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", session="shared")})
    updates: dict[str, list[str]] = {"alice": [], "bob": []}

    def collector(name: str) -> Any:
        async def on_message(message: object) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updates[name].append(message.params.uri)

        return on_message

    async with (
        running_app(config) as proxy,
        connect(proxy.url, message_handler=collector("alice")) as alice,
        connect(proxy.url, message_handler=collector("bob")) as bob,
    ):
        await subscribe(alice, "memo://x")
        await subscribe(bob, "memo://x")
        await alice.call_tool("state_touch", {"uri": "memo://x"})
        await wait_until(lambda: updates["alice"] == updates["bob"] == ["memo://x"], what="both updates")
        await unsubscribe(bob, "memo://x")
        await alice.call_tool("state_touch", {"uri": "memo://x"})
        await wait_until(lambda: len(updates["alice"]) == 2, what="alice's second update")
        assert updates["bob"] == ["memo://x"]


async def test_capabilities_advertise_what_the_upstreams_offer(tmp_path: Path) -> None:
    rich = write_config(tmp_path, {"conf": conformance()}, name="rich.yaml")
    async with running_app(rich, upstreams=fixtures_in_memory()) as proxy, connect(proxy.url) as client:
        capabilities = client.server_capabilities
        assert capabilities.tools is not None
        assert capabilities.tools.list_changed
        assert capabilities.prompts is not None
        assert capabilities.prompts.list_changed
        assert capabilities.resources is not None
        assert capabilities.resources.subscribe
        assert capabilities.resources.list_changed
        assert capabilities.logging is not None
        assert capabilities.completions is not None

    echo_only = write_config(
        tmp_path,
        {"echo": {"command": sys.executable, "args": [str(ECHO_SERVER)]}},
        name="tools-only.yaml",
    )
    async with running_app(echo_only, upstreams=fixtures_in_memory()) as proxy, connect(proxy.url) as client:
        capabilities = client.server_capabilities
        assert capabilities.tools is not None
        assert capabilities.prompts is None
        assert capabilities.resources is None
        assert capabilities.logging is None
        assert capabilities.completions is None


async def test_a_resource_no_upstream_offers_is_invalid_params_naming_the_uri_in_data(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"one": fixture_server("one"), "two": fixture_server("two")})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource("nothing://here")
        assert (await client.read_resource("mcpstore:one:memo://kept")).contents  # both offer memo://: namespaced
    assert refused.value.error.code == types.INVALID_PARAMS
    assert refused.value.error.data == {"type": "UnknownResourceError", "uri": "nothing://here"}
