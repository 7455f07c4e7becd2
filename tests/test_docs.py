"""The SDK guide's examples, run as written: every ```python block of docs/sdk.md, in order, checking each
`# → output` it shows (see tests/doc_examples.py).

The guide runs embedded on a copy of the bundled config, its browser example on a Playwright MCP process
started with `--port`, and its remote example against a proxy process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.browser import running_playwright_sse
from tests.support import PROJECT_ROOT, running_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.playwright]

GUIDE = PROJECT_ROOT / "docs" / "sdk.md"
RUNNER = PROJECT_ROOT / "tests" / "doc_examples.py"


async def test_every_example_in_the_sdk_guide_runs_and_prints_what_the_guide_says(tmp_path: Path, site: str) -> None:
    embedded = tmp_path / "embedded"
    remote = tmp_path / "remote"
    for directory in (embedded, remote):
        directory.mkdir()
        shutil.copy(PROJECT_ROOT / "config" / "proxy.yaml", directory / "proxy.yaml")

    async with running_playwright_sse(tmp_path) as browser_url, running_proxy(remote / "proxy.yaml") as proxy:
        with anyio.fail_after(600):
            completed = await anyio.run_process(
                [sys.executable, str(RUNNER), str(GUIDE)],
                env={
                    **os.environ,
                    "MCPSTORE_PROXY_CONFIG": str(embedded / "proxy.yaml"),
                    "MCPSTORE_PROXY_URL": f"http://127.0.0.1:{proxy.port}",
                    "BROWSER_MCP_URL": browser_url,
                    "PAGE_URL": f"{site}/alpha.html",
                },
                cwd=tmp_path,
                stderr=subprocess.STDOUT,
                check=False,
            )
    output = completed.stdout.decode()
    assert completed.returncode == 0, output
    blocks = GUIDE.read_text().count("```python")
    assert f"--- {blocks} blocks ran" in output, output
