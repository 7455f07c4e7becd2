"""`session_scope: principal`: a principal's connections and sessionless requests share its own session, so a
client that reconnects for every call (as hosted connectors do), or speaks 2026-07-28 without a key, keeps its
upstream state; another principal never sees it. The default (`connection`) keeps one session per connection.

In process (`running_app`, upstreams in memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conversation import structured
from tests.inprocess import running_app
from tests.support import connect, fixture_server, write_config

pytestmark = pytest.mark.anyio

_TOKENS: dict[str, Any] = {
    "tokens": [
        {"token": "alice-token-0123456789", "principal": "alice"},
        {"token": "bob-token-0123456789", "principal": "bob"},
        {"token": "ops-token-0123456789", "principal": "ops", "admin": True},
    ]
}
ALICE = {"Authorization": "Bearer alice-token-0123456789"}
BOB = {"Authorization": "Bearer bob-token-0123456789"}


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_under_principal_scope_a_new_connection_for_every_call_keeps_the_principals_state(
    tmp_path: Path, mode: str
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, auth=_TOKENS, session_scope="principal")
    async with running_app(config) as proxy:
        async with connect(proxy.url, headers=ALICE, mode=mode) as first:
            await first.call_tool("state_remember", {"value": "one"})
            upstream = structured(await first.call_tool("state_whoami", {}))
        async with connect(proxy.url, headers=ALICE, mode=mode) as second:
            await second.call_tool("state_remember", {"value": "two"})
        async with connect(proxy.url, headers=ALICE, mode=mode) as third:
            assert structured(await third.call_tool("state_recall", {})) == ["one", "two"]
            assert structured(await third.call_tool("state_whoami", {})) == upstream
        async with connect(proxy.url, headers=BOB, mode=mode) as bob:
            assert structured(await bob.call_tool("state_recall", {})) == []
            assert structured(await bob.call_tool("state_whoami", {})) != upstream
        assert proxy.upstreams.is_alive(upstream), "a principal's session outlives its connections"


async def test_an_upstream_may_override_the_session_scope_for_itself(tmp_path: Path) -> None:
    servers = {"browser": fixture_server("browser", session_scope="principal"), "state": fixture_server("state")}
    config = write_config(tmp_path, servers, auth=_TOKENS)
    async with running_app(config) as proxy:
        async with connect(proxy.url, headers=ALICE) as first:
            await first.call_tool("browser_remember", {"value": "page"})
            await first.call_tool("state_remember", {"value": "connection-only"})
        async with connect(proxy.url, headers=ALICE) as second:
            assert structured(await second.call_tool("browser_recall", {})) == ["page"]
            assert structured(await second.call_tool("state_recall", {})) == []


async def test_by_default_each_connection_keeps_its_own_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, auth=_TOKENS)
    async with running_app(config) as proxy:
        async with connect(proxy.url, headers=ALICE) as first:
            await first.call_tool("state_remember", {"value": "one"})
        async with connect(proxy.url, headers=ALICE) as second:
            assert structured(await second.call_tool("state_recall", {})) == []
