"""End to end with a real stateful upstream: @playwright/mcp from npm driving Debian's chromium.

Two clients browse two local pages and each snapshot shows its own page; within
one session, navigate → click → snapshot shows the click's effect. The test
suite's installer (scripts/test.sh) provides the npm package and chromium.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import PROJECT_ROOT, connect, running_proxy, text_of, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.playwright]

PLAYWRIGHT_CLI = PROJECT_ROOT / "node_modules" / "@playwright" / "mcp" / "cli.js"

PAGES = {
    "alpha.html": "<!doctype html><title>Alpha page</title><h1>Alpha heading</h1>",
    "beta.html": "<!doctype html><title>Beta page</title><h1>Beta heading</h1>",
    "counter.html": (
        "<!doctype html><title>Counter page</title>"
        "<button onclick=\"document.getElementById('out').textContent = 'Clicked ' + (++window.n) + ' times'\">"
        "Press me</button><p id='out'>Not clicked</p><script>window.n = 0</script>"
    ),
}


def playwright_upstream(workdir: Path) -> dict[str, Any]:
    chromium = shutil.which("chromium")
    if not PLAYWRIGHT_CLI.exists() or chromium is None:
        pytest.fail(
            "Playwright MCP or chromium is missing: run scripts/test.sh, which installs @playwright/mcp (npm) "
            "and chromium (apt-get, as root)"
        )
    return {
        "command": "node",
        "args": [
            str(PLAYWRIGHT_CLI),
            "--headless",
            "--browser",
            "chromium",
            "--executable-path",
            chromium,
            "--no-sandbox",
            "--isolated",
        ],
        "cwd": str(workdir),
        "prefix": "web",
    }


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """The test pages, served over HTTP on 127.0.0.1 (Playwright MCP blocks file:// URLs)."""
    root = tmp_path / "site"
    root.mkdir()
    for name, html in PAGES.items():
        (root / name).write_text(html)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's parameter name
        pass


async def test_two_clients_keep_separate_browser_pages(tmp_path: Path, site: str) -> None:
    config = write_config(tmp_path, {"browser": playwright_upstream(tmp_path)}, upstream_start_timeout_seconds=120)
    async with running_proxy(config) as proxy, connect(proxy.url) as alice, connect(proxy.url) as bob:
        await alice.call_tool("web_browser_navigate", {"url": f"{site}/alpha.html"})
        await bob.call_tool("web_browser_navigate", {"url": f"{site}/beta.html"})

        alice_view = text_of(await alice.call_tool("web_browser_snapshot", {}))
        bob_view = text_of(await bob.call_tool("web_browser_snapshot", {}))
        assert "Page Title: Alpha page" in alice_view
        assert "Alpha heading" in alice_view
        assert "Beta" not in alice_view
        assert "Page Title: Beta page" in bob_view
        assert "Beta heading" in bob_view
        assert "Alpha" not in bob_view


async def test_a_click_in_one_session_shows_in_that_sessions_next_snapshot(tmp_path: Path, site: str) -> None:
    config = write_config(tmp_path, {"browser": playwright_upstream(tmp_path)}, upstream_start_timeout_seconds=120)
    async with running_proxy(config) as proxy, connect(proxy.url) as client:
        await client.call_tool("web_browser_navigate", {"url": f"{site}/counter.html"})
        before = text_of(await client.call_tool("web_browser_snapshot", {}))
        assert "Not clicked" in before
        button = re.search(r'button "Press me" \[ref=(\w+)\]', before)
        assert button is not None, before

        clicked = await client.call_tool("web_browser_click", {"element": "Press me button", "target": button.group(1)})
        assert not clicked.is_error, text_of(clicked)

        after = text_of(await client.call_tool("web_browser_snapshot", {}))
        assert "Clicked 1 times" in after
        assert "Not clicked" not in after
