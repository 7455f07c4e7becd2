"""`@modelcontextprotocol/server-everything` from npm as an upstream: its tools, resources, prompts and
completions are usable through the proxy.

The proxy runs in this process (`running_app`); server-everything stays what it is, a Node process over stdio,
started through the proxy's real stdio transport.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import types

from tests.conversation import text_of
from tests.inprocess import InProcessProxy, running_app
from tests.support import NODE_BIN, PROJECT_ROOT, connect, descendants, is_alive, wait_until, write_config

pytestmark = pytest.mark.anyio

EVERYTHING = PROJECT_ROOT / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


def everything() -> dict[str, Any]:
    node = NODE_BIN / "node"
    if not EVERYTHING.exists() or not node.exists():
        pytest.fail("server-everything or Node 22 is missing: run scripts/test.sh, which installs the npm peers")
    # Node 22 by its path: the proxy runs in this process, whose PATH may find the system's Node first.
    return {"command": str(node), "args": [str(EVERYTHING), "stdio"]}


@asynccontextmanager
async def proxy_with_everything(directory: Path) -> AsyncGenerator[InProcessProxy]:
    """The proxy in this process with server-everything as its upstream; leaving checks that the upstream's
    processes (started by the proxy, so children of this process) ended with it."""
    before = descendants(os.getpid())
    config = write_config(directory, {"everything": everything()})
    async with running_app(config) as proxy:
        yield proxy
        started = descendants(os.getpid()) - before
        assert started, "server-everything runs as a process of its own"
    await wait_until(lambda: not any(is_alive(pid) for pid in started), what=f"server-everything's processes {started}")


async def test_server_everything_tools_work_through_the_proxy(tmp_path: Path) -> None:
    async with proxy_with_everything(tmp_path) as proxy, connect(proxy.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"everything_echo", "everything_get-sum", "everything_get-tiny-image"} <= names
        assert text_of(await client.call_tool("everything_echo", {"message": "hi"})) == "Echo: hi"
        assert "5" in text_of(await client.call_tool("everything_get-sum", {"a": 2, "b": 3}))
        image = await client.call_tool("everything_get-tiny-image", {})
        assert any(isinstance(block, types.ImageContent) for block in image.content)
        structured = await client.call_tool("everything_get-structured-content", {"location": "New York"})
        assert structured.structured_content is not None


async def test_server_everything_resources_and_templates_work_through_the_proxy(tmp_path: Path) -> None:
    async with proxy_with_everything(tmp_path) as proxy, connect(proxy.url) as client:
        resources = (await client.list_resources()).resources
        assert resources
        first = await client.read_resource(resources[0].uri)
        assert first.contents[0].uri == resources[0].uri
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert "demo://resource/dynamic/text/{resourceId}" in templates
        dynamic = await client.read_resource("demo://resource/dynamic/text/3")
        assert isinstance(dynamic.contents[0], types.TextResourceContents)


async def test_server_everything_prompts_and_completion_work_through_the_proxy(tmp_path: Path) -> None:
    async with proxy_with_everything(tmp_path) as proxy, connect(proxy.url) as client:
        names = {prompt.name for prompt in (await client.list_prompts()).prompts}
        assert {"everything_simple-prompt", "everything_args-prompt"} <= names
        simple = await client.get_prompt("everything_simple-prompt", {})
        assert simple.messages
        with_args = await client.get_prompt("everything_args-prompt", {"city": "Lisbon", "state": "PT"})
        content = with_args.messages[0].content
        assert isinstance(content, types.TextContent)
        assert "Lisbon" in content.text
        completion = await client.complete(
            types.PromptReference(type="ref/prompt", name="everything_completable-prompt"),
            {"name": "department", "value": "E"},
        )
        assert completion.completion.values
