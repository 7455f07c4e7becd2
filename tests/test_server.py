"""The MCP face's own rules: during start-up, a request for an upstream that is up never waits for one that is still
starting, while a name that an upstream still starting will bring waits for it (within `startup_wait_seconds`).

In process (`running_app`), upstreams in memory; `--start-after FILE` holds an upstream in its start until the test
creates FILE, and `--start-gate` holds one there for good.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import types

from tests.conversation import structured
from tests.inprocess import running_app
from tests.support import closed_gate, connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

_WINDOW_SECONDS = 120.0
"""A start-up window far longer than any test here may take: a request that waited it out would time out."""


async def test_a_call_to_an_upstream_that_is_up_does_not_wait_for_one_still_starting(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    config = write_config(
        tmp_path,
        {"state": fixture_server("state"), "slow": fixture_server("slow", "--start-gate", str(gate))},
        startup_wait_seconds=_WINDOW_SECONDS,
    )
    async with running_app(config, wait_for_upstreams=False) as proxy, connect(proxy.url) as client:
        await wait_until(lambda: any(gate.glob("hanging-*")), what="the slow upstream to hang in its start")
        await wait_until(lambda: "upstream 'state' is ready" in proxy.log, timeout=30, what="'state' to be ready")
        # The request alone: the SDK's `call_tool` would list the tools afterwards to check the result, and a
        # listing does wait, by design, for the upstreams still starting.
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name="state_echo", arguments={"text": "now"})
        )
        with anyio.fail_after(_WINDOW_SECONDS / 4):
            result = await client.session.send_request(request, types.CallToolResult)
        assert structured(result) == "now"


async def test_a_call_to_a_tool_of_an_upstream_still_starting_waits_for_it_within_the_window(tmp_path: Path) -> None:
    go = tmp_path / "go"
    config = write_config(
        tmp_path,
        {"slow": fixture_server("slow", "--start-after", str(go))},
        startup_wait_seconds=_WINDOW_SECONDS,
    )
    async with running_app(config, wait_for_upstreams=False) as proxy, connect(proxy.url) as client:
        await wait_until(lambda: any(tmp_path.glob("waiting-*")), what="the slow upstream to wait in its start")
        answers: list[str] = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                # Unknown when asked: without the wait this fails at once with -32602 (and the test with it).
                answers.append(structured(await client.call_tool("slow_echo", {"text": "waited"})))

            tg.start_soon(call)
            await wait_until(lambda: requests_in_flight(proxy.port, 1), what="the call to wait in the proxy")
            go.touch()
        assert answers == ["waited"]
        assert "upstream 'slow' is ready" in proxy.log


async def requests_in_flight(port: int, count: int) -> bool:
    async with httpx2.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/admin/status")).json()["requests_in_flight"] == count
