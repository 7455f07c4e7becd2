"""Playwright MCP (from npm, driving Debian's chromium) and the local pages it browses, for end-to-end tests.

The test suite's installer (scripts/test.sh) provides the npm package and chromium.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import AsyncGenerator, Generator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import PROJECT_ROOT, descendants, free_port, is_alive, node_environment, wait_listening

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


def playwright_arguments() -> list[str]:
    """`node` arguments that run Playwright MCP headless on chromium, each client with an in-memory profile."""
    chromium = shutil.which("chromium")
    if not PLAYWRIGHT_CLI.exists() or chromium is None:
        pytest.fail(
            "Playwright MCP or chromium is missing: run scripts/test.sh, which installs @playwright/mcp (npm) "
            "and chromium (apt-get, as root)"
        )
    return [
        str(PLAYWRIGHT_CLI),
        "--headless",
        "--browser",
        "chromium",
        "--executable-path",
        chromium,
        "--no-sandbox",
        "--isolated",
    ]


def playwright_upstream(workdir: Path) -> dict[str, Any]:
    """An `mcpServers` entry that runs Playwright MCP over stdio, its tools prefixed `web_`."""
    return {"command": "node", "args": playwright_arguments(), "cwd": str(workdir), "prefix": "web"}


@asynccontextmanager
async def running_playwright_sse(workdir: Path) -> AsyncGenerator[str]:
    """Playwright MCP started with `--port` on 127.0.0.1; yields its legacy SSE URL.

    Leaving stops it by pid and checks that the browsers it started are gone too.
    """
    port = free_port()
    process = await anyio.open_process(
        ["node", *playwright_arguments(), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        env=node_environment(),
    )
    try:
        await wait_listening(process, port, "Playwright MCP")
        # Playwright checks the Host header against the name it prints ("localhost"), not the address.
        yield f"http://localhost:{port}/sse"
    finally:
        with anyio.CancelScope(shield=True):
            started = descendants(process.pid)
            process.terminate()
            try:
                with anyio.fail_after(20):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
            # Playwright's own cleanup is not under test; stop any chromium helper it left behind.
            for pid in started:
                if is_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def button_ref(snapshot: str, label: str) -> str:
    """The accessibility-snapshot ref of the button labelled `label`."""
    found = re.search(rf'button "{re.escape(label)}" \[ref=(\w+)\]', snapshot)
    assert found is not None, f"no button {label!r} in the snapshot:\n{snapshot}"
    return found.group(1)


@contextmanager
def serving_pages(directory: Path) -> Generator[str]:
    """PAGES served over HTTP on 127.0.0.1 (Playwright MCP blocks file:// URLs); yields the site's base URL."""
    directory.mkdir()
    for name, html in PAGES.items():
        (directory / name).write_text(html)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
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
