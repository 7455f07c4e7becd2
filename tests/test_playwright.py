"""End to end with a real stateful upstream: @playwright/mcp from npm driving Debian's chromium.

Two clients browse two local pages and each snapshot shows its own page; within
one session, navigate → click → snapshot shows the click's effect.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import button_ref, playwright_upstream
from tests.conversation import text_of
from tests.support import connect, running_proxy, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.playwright]


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
        target = button_ref(before, "Press me")

        clicked = await client.call_tool("web_browser_click", {"element": "Press me button", "target": target})
        assert not clicked.is_error, text_of(clicked)

        after = text_of(await client.call_tool("web_browser_snapshot", {}))
        assert "Clicked 1 times" in after
        assert "Not clicked" not in after
