"""The MCP Inspector CLI, a real third-party TypeScript client, against the proxy over HTTP and over stdio,
and its `mcpdo` daemon keeping one session (and the upstream's state) across separate invocations."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import (
    CONFORMANCE_SERVER,
    NODE_BIN,
    fixture_server,
    is_alive,
    node_environment,
    running_proxy,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.anyio


def upstreams() -> dict[str, Any]:
    return {
        "state": fixture_server("state"),
        "conf": {"command": sys.executable, "args": [str(CONFORMANCE_SERVER)]},
    }


async def inspector(home: Path, *arguments: str) -> Any:
    """Run one `mcp-inspector --cli` call and return its JSON result."""
    completed = await anyio.run_process(
        [str(NODE_BIN / "mcp-inspector"), "--cli", *arguments, "--format", "json"],
        env=node_environment(HOME=str(home)),
        check=False,
    )
    output = completed.stdout.decode().strip().splitlines()
    assert completed.returncode == 0, completed.stderr.decode() + completed.stdout.decode()
    answer = json.loads(output[-1])
    assert "result" in answer, answer
    return answer["result"]


async def mcpdo(home: Path, *arguments: str) -> str:
    completed = await anyio.run_process(
        [str(NODE_BIN / "mcpdo"), *arguments], env=node_environment(HOME=str(home)), check=False
    )
    assert completed.returncode == 0, completed.stderr.decode() + completed.stdout.decode()
    return completed.stdout.decode()


async def check_the_four_methods(home: Path, *target: str) -> None:
    listed = await inspector(home, *target, "--method", "tools/list")
    assert {"state_echo", "conf_test_simple_text"} <= {tool["name"] for tool in listed["tools"]}

    called = await inspector(
        home, *target, "--method", "tools/call", "--tool-name", "state_echo", "--tool-arg", "text=via inspector"
    )
    assert called["content"] == [{"type": "text", "text": "via inspector"}]

    read = await inspector(home, *target, "--method", "resources/read", "--uri", "test://static-text")
    assert read["contents"][0]["text"] == "This is the content of the static text resource."

    prompt = await inspector(home, *target, "--method", "prompts/get", "--prompt-name", "conf_test_simple_prompt")
    assert prompt["messages"][0]["content"]["text"] == "This is a simple prompt for testing."


async def test_inspector_cli_over_http_lists_calls_reads_and_gets_prompts(tmp_path: Path) -> None:
    config = write_config(tmp_path, upstreams())
    async with running_proxy(config) as proxy:
        await check_the_four_methods(tmp_path, proxy.url)


async def test_inspector_cli_over_stdio_through_the_stdio_command(tmp_path: Path) -> None:
    config = write_config(tmp_path, upstreams())
    await check_the_four_methods(
        tmp_path, "-e", f"MCPSTORE_PROXY_CONFIG={config}", sys.executable, "-m", "mcpstore_proxy", "stdio"
    )


async def test_mcpdo_keeps_one_session_and_the_upstream_state_across_invocations(tmp_path: Path) -> None:
    config = write_config(tmp_path, upstreams())
    async with running_proxy(config) as proxy:
        await mcpdo(tmp_path, "connect", "--connection", "proxied", proxy.url)
        status = await mcpdo(tmp_path, "daemon", "status")
        daemon = re.search(r"Daemon pid (\d+)", status)
        assert daemon is not None, status
        daemon_pid = int(daemon.group(1))
        try:
            await mcpdo(tmp_path, "--connection", "proxied", "tools/call", "state_remember", "value:=first")
            await mcpdo(tmp_path, "--connection", "proxied", "tools/call", "state_remember", "value:=second")
            recalled = await mcpdo(
                tmp_path, "--connection", "proxied", "--format", "json", "tools/call", "state_recall"
            )
            assert json.loads(recalled)["structuredContent"] == {"result": ["first", "second"]}
        finally:
            await mcpdo(tmp_path, "daemon", "stop")
            await wait_until(lambda: not is_alive(daemon_pid), what="the mcpdo daemon to stop")
