"""The SDK's snippet, for real: Playwright MCP started with `--port` and added as an SSE upstream at run time.

Runs in both modes (embedded engine, running proxy), both in this process (`tests.inprocess.sdk_store`); the
browser is a real Playwright MCP process. Tool names are Playwright's own (`browser_navigate`),
resolved through the session's bound services.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from mcpstore_proxy import MCPStore, Session, UpstreamStartError
from tests.browser import button_ref, running_playwright_sse
from tests.conversation import text_of
from tests.inprocess import sdk_store
from tests.support import write_config

pytestmark = [pytest.mark.anyio, pytest.mark.playwright]


@pytest.fixture
async def browser_url(tmp_path: Path) -> AsyncGenerator[str]:
    async with running_playwright_sse(tmp_path) as url:
        yield url


@pytest.fixture
async def store(tmp_path: Path, mode: str, browser_url: str) -> AsyncGenerator[MCPStore]:
    async with sdk_store(write_config(tmp_path, {}), mode) as harness:
        harness.store.for_store().add_service({"name": "browser", "url": browser_url})
        harness.store.for_store().wait_service("browser", timeout=60)
        yield harness.store


def snapshot(session: Session) -> str:
    return text_of(session.use_tool("browser_snapshot", {}))


async def test_with_session_keeps_the_page_between_calls(store: MCPStore, site: str) -> None:
    with store.for_store().with_session("browser_task") as session:
        session.bind_service("browser")
        session.use_tool("browser_navigate", {"url": f"{site}/counter.html"})
        session.use_tool(
            "browser_click", {"element": "Press me button", "target": button_ref(snapshot(session), "Press me")}
        )
        assert "Clicked 1 times" in snapshot(session)


async def test_with_session_async_keeps_the_page_between_calls(store: MCPStore, site: str) -> None:
    async with store.for_store().with_session_async("browser_task") as session:
        await session.bind_service_async("browser")
        await session.use_tool_async("browser_navigate", {"url": f"{site}/alpha.html"})
        page = text_of(await session.use_tool_async("browser_snapshot", {}))
        assert "Page Title: Alpha page" in page


async def test_session_auto_reuses_one_browser_page_for_scope_level_calls(store: MCPStore, site: str) -> None:
    context = store.for_store()
    context.session_auto()
    try:
        context.use_tool("browser_navigate", {"url": f"{site}/beta.html"})
        page = text_of(context.use_tool("browser_snapshot", {}))
        assert "Page Title: Beta page" in page
        assert "Beta heading" in page
    finally:
        context.session_manual()


async def test_two_created_sessions_hold_two_different_pages(store: MCPStore, site: str) -> None:
    context = store.for_store()
    alice = context.create_session("alice")
    bob = context.create_session("bob")
    try:
        for session in (alice, bob):
            session.bind_service("browser")
        alice.use_tool("browser_navigate", {"url": f"{site}/alpha.html"})
        bob.use_tool("browser_navigate", {"url": f"{site}/beta.html"})

        alice_page, bob_page = snapshot(alice), snapshot(bob)
        assert "Page Title: Alpha page" in alice_page
        assert "Beta" not in alice_page
        assert "Page Title: Beta page" in bob_page
        assert "Alpha" not in bob_page
    finally:
        alice.close_session()
        bob.close_session()


async def test_a_url_the_upstream_refuses_fails_the_wait_with_the_likely_fix(store: MCPStore, browser_url: str) -> None:
    # The same Playwright server, by address instead of the host name it accepts: it answers 403.
    by_address = browser_url.replace("localhost", "127.0.0.1")
    store.for_store().add_service({"name": "by_address", "url": by_address})
    try:
        with pytest.raises(UpstreamStartError, match=r"(?s)'by_address'.*403.*accepts only the host"):
            store.for_store().wait_service("by_address", timeout=3)
    finally:
        store.for_store().remove_service("by_address")
