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
from dataclasses import dataclass
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
EXTENSION_LINE = re.compile(r"^\s+[✓✗] ([\w-]+) \(extension\)", re.MULTILINE)


@asynccontextmanager
async def conformance_upstream(transport: str) -> AsyncGenerator[dict[str, Any]]:
    """The fixture as an `mcpServers` entry: a command (stdio), or a URL it serves (Streamable HTTP)."""
    if transport == "stdio":
        yield {"command": sys.executable, "args": [str(CONFORMANCE_SERVER)], "prefix": ""}
        return
    async with running_fixture_server("http", server=CONFORMANCE_SERVER) as url:
        yield {"url": url, "prefix": ""}


@dataclass(frozen=True)
class Release:
    """One conformance release, and the scenarios it runs: its active suite, or a frozen requirement set."""

    package: str
    selection: tuple[str, ...]
    minimum_scenarios: int

    @property
    def label(self) -> str:
        version = json.loads((PROJECT_ROOT / "node_modules" / self.package / "package.json").read_text())["version"]
        return f"{version} {' '.join(self.selection)}"


RELEASES = {
    "0.1.16-active": Release("@modelcontextprotocol/conformance", ("--suite", "active"), 30),
    "next-2025-11-25": Release("conformance-next", ("--requirements", "2025-11-25"), 30),
    "next-2026-07-28": Release("conformance-next", ("--requirements", "2026-07-28"), 37),
}


async def run_suite(release: Release, proxy_url: str, results: Path) -> str:
    entry = PROJECT_ROOT / "node_modules" / release.package / "dist" / "index.js"
    completed = await anyio.run_process(
        [str(NODE_BIN / "node"), str(entry), "server", "--url", proxy_url, *release.selection, "-o", str(results)],
        env=node_environment(),
        cwd=PROJECT_ROOT,
        check=False,
    )
    return completed.stdout.decode() + completed.stderr.decode()


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("release", list(RELEASES))
async def test_every_conformance_scenario_passes_through_the_proxy(
    tmp_path: Path, release: str, transport: str
) -> None:
    suite = RELEASES[release]
    async with conformance_upstream(transport) as upstream:
        # The suite's client never sends DELETE: leave room for one session per scenario.
        config = write_config(tmp_path, {"conformance": upstream}, max_sessions_per_upstream=128)
        async with running_proxy(config) as proxy:
            with anyio.fail_after(600):
                output = await run_suite(suite, proxy.url, tmp_path / "results")

    scenarios = SCENARIO_LINE.findall(output)
    total = TOTAL_LINE.search(output)
    assert total is not None, f"the suite printed no summary:\n{output[-3000:]}"
    # Extensions (the tasks extension) are run but belong to no requirement set; the proxy does not offer them.
    extensions = set(EXTENSION_LINE.findall(output))
    scored = [
        (mark, name, int(passed), int(failures)) for mark, name, passed, failures in scenarios if name not in extensions
    ]
    checks_passed = sum(passed for _, _, passed, _ in scored)
    checks_failed = sum(failures for _, _, _, failures in scored)
    failed = [name for mark, name, _, failures in scored if mark != "✓" or failures]
    REPORT.append(
        f"conformance {suite.label}, {transport} upstream: {len(scored) - len(failed)}/{len(scored)} scenarios, "
        f"{checks_passed}/{checks_passed + checks_failed} checks "
        f"({100 * checks_passed // max(1, checks_passed + checks_failed)}%)"
        + (f"; not offered: {len(extensions)} extension scenarios (tasks)" if extensions else "")
    )
    assert not failed, f"failing scenarios: {failed}\n{output[-3000:]}"
    assert len(scored) >= suite.minimum_scenarios, f"expected {suite.minimum_scenarios} scenarios, saw {len(scored)}"
    statuses: set[str] = set()
    for path in (tmp_path / "results").glob("*/checks.json"):
        if not any(f"server-{name}-" in path.parent.name for name in extensions):
            statuses |= {check["status"] for check in json.loads(path.read_text())}
    assert "FAILURE" not in statuses
