"""The official MCP conformance suite, run against the proxy with our fixture server as the upstream.

The suite (`@modelcontextprotocol/conformance`) connects to the proxy as a real
client and checks each active server scenario. The upstream is
tests/fixtures/conformance_server.py, written from the suite's expectations,
once as a stdio upstream and once as a Streamable HTTP upstream. Every active
scenario must pass; there is no expected-failure baseline. The suite's summary
is printed at the end of the test run.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import (
    CONFORMANCE_SERVER,
    NODE_BIN,
    PROJECT_ROOT,
    REPORT,
    node_environment,
    running_fixture_server,
    running_proxy,
    write_config,
)

pytestmark = pytest.mark.anyio

SCENARIO_LINE = re.compile(r"^([✓✗]) ([\w-]+): (\d+) passed, (\d+) failed", re.MULTILINE)
TOTAL_LINE = re.compile(r"^Total: (\d+) passed, (\d+) failed", re.MULTILINE)


@asynccontextmanager
async def conformance_upstream(transport: str) -> AsyncGenerator[dict[str, Any]]:
    """The fixture as an `mcpServers` entry: a command (stdio), or a URL it serves (Streamable HTTP)."""
    if transport == "stdio":
        yield {"command": sys.executable, "args": [str(CONFORMANCE_SERVER)], "prefix": ""}
        return
    async with running_fixture_server("http", server=CONFORMANCE_SERVER) as url:
        yield {"url": url, "prefix": ""}


async def run_suite(proxy_url: str, results: Path) -> str:
    completed = await anyio.run_process(
        [str(NODE_BIN / "conformance"), "server", "--url", proxy_url, "--suite", "active", "-o", str(results)],
        env=node_environment(),
        cwd=PROJECT_ROOT,
        check=False,
    )
    return completed.stdout.decode() + completed.stderr.decode()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_every_active_conformance_scenario_passes_through_the_proxy(tmp_path: Path, transport: str) -> None:
    async with conformance_upstream(transport) as upstream:
        # The suite's client never sends DELETE: leave room for one session per scenario.
        config = write_config(tmp_path, {"conformance": upstream}, max_sessions_per_upstream=128)
        async with running_proxy(config) as proxy:
            with anyio.fail_after(600):
                output = await run_suite(proxy.url, tmp_path / "results")

    scenarios = SCENARIO_LINE.findall(output)
    total = TOTAL_LINE.search(output)
    REPORT.append(f"conformance suite, {transport} upstream:")
    REPORT.extend(f"  {line}" for line in output[output.find("=== SUMMARY") :].strip().splitlines()[1:])
    assert total is not None, f"the suite printed no summary:\n{output[-3000:]}"
    failed = [name for mark, name, _, failures in scenarios if mark != "✓" or failures != "0"]
    assert not failed, f"failing scenarios: {failed}\n{output[-3000:]}"
    assert total.group(2) == "0"
    assert len(scenarios) >= 30, f"expected the suite's 30 active scenarios, saw {len(scenarios)}"
    checks = [json.loads(path.read_text()) for path in (tmp_path / "results").glob("*/checks.json")]
    assert len(checks) == len(scenarios)
    statuses = {check["status"] for scenario in checks for check in scenario}
    assert "FAILURE" not in statuses
