"""The status page at `/status`: for admins only (as `/admin/status`), server-rendered HTML that refreshes itself,
shows the upstreams, each client session (by its short hash, with principal, kind, age and idle time) and the recent
resets and refusals, escapes every value, and reads on a phone. The browser test loads it in headless Chromium
(Playwright for Python, Debian's chromium) after real MCP traffic, and saves screenshots under test-artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest
from mcp import Client, MCPError

from mcpstore_proxy.errors import SESSION_REFUSED
from tests.conversation import structured
from tests.inprocess import InProcessProxy, running_app
from tests.support import PROJECT_ROOT, REPORT, fixture_server, streamable_http_client, wait_until, write_config

pytestmark = pytest.mark.anyio

ALICE: Final = "alice-token-" + "a" * 16
BOB: Final = "bob-token-" + "b" * 16
OPERATOR: Final = "operator-token-" + "o" * 16
ARTIFACTS: Final = PROJECT_ROOT / "test-artifacts"
CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_FLAGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_HOSTILE: Final = "<script>alert('owned')</script>"


def operated_config(directory: Path, **settings: Any) -> Path:
    """Alice and bob as principals, an admin token, an isolated `state` upstream capped at 2 sessions, a shared
    `notes`, and a `broken` one whose start fails with HTML in its last words."""
    return write_config(
        directory,
        {
            "state": fixture_server("state"),
            "notes": fixture_server("notes", session="shared"),
            "broken": fixture_server("broken", "--fail-start", _HOSTILE),
        },
        admin_token=OPERATOR,
        max_sessions_per_upstream=2,
        auth={
            "tokens": [
                {"token": ALICE, "principal": "alice", "agents": ["*"]},
                {"token": BOB, "principal": "bob", "agents": ["*"]},
            ]
        },
        **settings,
    )


@asynccontextmanager
async def traffic(proxy: InProcessProxy) -> AsyncGenerator[list[str]]:
    """Alice and bob each hold a session with `state`; alice's second connection is refused (the cap is 2); bob's
    upstream dies, so his next call starts afresh, with a reset. Yields the Mcp-Session-Id values the proxy gave out,
    which must appear nowhere."""
    session_ids: list[str] = []

    async def note(response: httpx2.Response) -> None:
        if "mcp-session-id" in response.headers:
            session_ids.append(response.headers["mcp-session-id"])

    async with AsyncExitStack() as stack:
        clients: list[Client] = []
        for token in (ALICE, BOB, ALICE):
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, event_hooks={"response": [note]})
            )
            client = Client(streamable_http_client(proxy.url, http_client=http), mode="legacy", cache=None)
            clients.append(await stack.enter_async_context(client))
        alice, bob, alice_again = clients
        await alice.call_tool("state_remember", {"value": "alice's"})
        await bob.call_tool("state_remember", {"value": "bob's"})
        with pytest.raises(MCPError) as refused:
            await alice_again.call_tool("state_remember", {"value": "one too many"})
        assert refused.value.code == SESSION_REFUSED
        bobs_upstream = structured(await bob.call_tool("state_whoami", {}))
        await proxy.kill_upstream(bobs_upstream)

        async def bobs_session_is_gone() -> bool:
            return (await get(proxy, "/admin/status", OPERATOR)).json()["upstreams"]["state"]["sessions"] == 1

        await wait_until(bobs_session_is_gone, what="the proxy to see bob's upstream session end")
        assert structured(await bob.call_tool("state_whoami", {})) != bobs_upstream
        yield session_ids


async def get(proxy: InProcessProxy, path: str, token: str | None = None, **headers: str) -> httpx2.Response:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        return await http.get(f"http://127.0.0.1:{proxy.port}{path}", headers=headers)


async def test_the_status_page_is_refused_without_a_token_and_to_a_principal_who_is_not_an_admin(
    tmp_path: Path,
) -> None:
    async with running_app(operated_config(tmp_path)) as proxy:
        assert (await get(proxy, "/status")).status_code == 401
        assert (await get(proxy, "/status", "not-a-token-" + "x" * 16)).status_code == 401
        refused = await get(proxy, "/status", ALICE)
        assert refused.status_code == 403
        assert "is not an admin" in refused.json()["error"]["message"]
        page = await get(proxy, "/status", OPERATOR)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert '<meta http-equiv="refresh" content="5">' in page.text
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text


async def test_the_status_page_is_refused_to_a_page_of_another_site_even_with_the_operators_token(
    tmp_path: Path,
) -> None:
    # DNS rebinding: a page of another site that resolves its name to the proxy sends its own Host and Origin.
    async with running_app(operated_config(tmp_path)) as proxy:
        assert (await get(proxy, "/status", OPERATOR, Host="attacker.example")).status_code == 421
        assert (await get(proxy, "/status", OPERATOR, Origin="http://attacker.example")).status_code == 403
        assert (await get(proxy, "/status", OPERATOR, Origin=f"http://127.0.0.1:{proxy.port}")).status_code == 200


async def test_admin_status_lists_each_client_session_by_hash_with_its_principal_kind_age_and_idle_time(
    tmp_path: Path,
) -> None:
    async with running_app(operated_config(tmp_path)) as proxy, traffic(proxy) as session_ids:
        answer = await get(proxy, "/admin/status", OPERATOR)
        status = answer.json()
    state = status["upstreams"]["state"]
    assert (state["transport"], state["session_mode"], state["sessions"]) == ("stdio", "isolated", 2)
    assert sorted(client["principal"] for client in state["clients"]) == ["alice", "bob"]
    for client in state["clients"]:
        assert re.fullmatch(r"#[0-9a-f]{10}", client["session"])
        assert client["kind"] == "connection"
        assert client["state"] == "ready"
        assert client["age_seconds"] >= client["idle_seconds"] >= 0
    assert status["upstreams"]["notes"]["session_mode"] == "shared"
    assert status["upstreams"]["notes"]["clients"] == []
    [refusal] = [event for event in status["events"] if event["kind"] == "refusal"]
    assert refusal["upstream"] == "state"
    assert "cap" in refusal["reason"]
    [reset] = [event for event in status["events"] if event["kind"] == "reset"]
    assert reset["upstream"] == "state"
    assert re.fullmatch(r"connection #[0-9a-f]{10}", reset["session"])  # its kind and short hash, never its id
    assert reset["principal"] == "bob"
    assert session_ids
    for session_id in session_ids:
        assert session_id not in answer.text


async def test_every_value_on_the_status_page_is_escaped(tmp_path: Path) -> None:
    async with running_app(operated_config(tmp_path)) as proxy:
        page = (await get(proxy, "/status", OPERATOR)).text
    assert _HOSTILE not in page
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page  # the page runs no script of its own either


async def test_chromium_shows_upstreams_sessions_and_the_refusal_on_a_desktop_and_a_phone(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium): the status page is not loaded in a browser")
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    desktop_shot, phone_shot = ARTIFACTS / "status-page-desktop.png", ARTIFACTS / "status-page-phone.png"
    async with (
        running_app(operated_config(tmp_path)) as proxy,
        traffic(proxy) as session_ids,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            desktop = await browser.new_page(
                viewport={"width": 1280, "height": 800},
                extra_http_headers={"Authorization": f"Bearer {OPERATOR}"},
            )
            await desktop.goto(f"http://127.0.0.1:{proxy.port}/status")
            assert await desktop.title() == "mcpstore-proxy status"
            upstreams = desktop.locator("table").first
            for name, state, sessions in (("state", "ready", "2"), ("notes", "ready", "one, shared")):
                row = upstreams.locator("tr", has_text=re.compile(rf"^{name}"))
                cells = await row.locator("td").all_inner_texts()
                assert cells[:2] == [name, state]
                assert cells[5] == sessions
            broken = await upstreams.locator("tr", has_text=re.compile(r"^broken")).locator("td").all_inner_texts()
            assert broken[1] == "failed"
            assert _HOSTILE in broken[-1]  # shown as text, not run
            body = await desktop.locator("body").inner_text()
            sessions_table = desktop.locator("h3:text-is('state') + div table")
            principals = await sessions_table.locator("tbody tr td:nth-child(3)").all_inner_texts()
            assert sorted(principals) == ["alice", "bob"]
            assert "Recent resets and refusals" in body
            refusal = desktop.locator("tr", has_text="refusal")
            assert "cap" in await refusal.first.inner_text()
            reset = desktop.locator("tr", has_text="reset")
            assert (await reset.first.locator("td").all_inner_texts())[4] == "bob"  # the principal column
            for session_id in session_ids:
                assert session_id not in await desktop.content()
            await desktop.screenshot(path=str(desktop_shot), full_page=True)

            phone = await browser.new_page(
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                is_mobile=True,
                extra_http_headers={"Authorization": f"Bearer {OPERATOR}"},
            )
            await phone.goto(f"http://127.0.0.1:{proxy.port}/status")
            # The tables scroll in their own boxes: the page itself is no wider than the phone.
            assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            assert await phone.locator("h1").inner_text() == "mcpstore-proxy status"
            await phone.screenshot(path=str(phone_shot), full_page=True)
        finally:
            await browser.close()
    for shot in (desktop_shot, phone_shot):
        assert shot.stat().st_size > 0
        line = f"status page screenshot: {shot.relative_to(PROJECT_ROOT)}"
        print(line)
        REPORT.append(line)
