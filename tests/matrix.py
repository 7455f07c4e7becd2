"""The shared ground of the client matrix (tests/test_client_matrix*.py): one real proxy process per test module,
without auth, serving the stateful fixture upstream, and the helpers that keep tests apart on it.

Who keeps what. A handshake-era client (2024-11-05 … 2025-11-25) keeps its connection's session. A 2026-07-28
request over HTTP without a key runs in its principal's own default session, one per principal and agent scope.
Any client gets a named session back wherever it presents the name.

Every client here is the same anonymous principal, so the keyless 2026-07-28 clients of every test of a module
share one default session. Each test therefore remembers values that carry its own tag and looks only at those
(`Probe`), and names its sessions uniquely (`session_name`), closing them when it ends.

A test module takes the fixtures by importing them: `anyio_backend`, `proxy` (module-scoped), `probe`,
`session_name`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import pytest
from mcp import Client

from tests.conversation import structured
from tests.support import (
    ProxyProcess,
    admin,
    descendants,
    fixture_server,
    is_alive,
    running_proxy,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.anyio

MODERN: Final = "2026-07-28"
HEADER: Final = "X-MCPStore-Session"
Key = Literal["header", "argument"]
KEYS: Final[Sequence[Key]] = ("header", "argument")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that one proxy (an async fixture) serves every test of the module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncGenerator[ProxyProcess]:
    config = write_config(
        tmp_path_factory.mktemp("client-matrix"),
        {"state": fixture_server("state")},
        # Connections that never say goodbye (each Inspector CLI call, for one) hold an upstream process until
        # they idle out; a minute is far longer than any test's pause between two calls, and the caps leave room
        # for a whole module's worth of them.
        session_idle_timeout_seconds=60,
        max_sessions_per_upstream=256,
        max_named_sessions_per_client=256,
    )
    async with running_proxy(config) as running:
        yield running


@dataclass(frozen=True)
class Probe:
    """Values unique to one test: tests that share a session (the anonymous principal's default one) read only
    their own."""

    tag: str

    def value(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def mine(self, remembered: Any) -> list[str]:
        assert isinstance(remembered, list), remembered
        values = cast("list[Any]", remembered)
        return [value for value in values if isinstance(value, str) and value.startswith(f"{self.tag}-")]


@pytest.fixture
def probe() -> Probe:
    return Probe(f"t{secrets.token_hex(4)}")


@pytest.fixture
async def session_name(proxy: ProxyProcess) -> AsyncGenerator[str]:
    """A session name no other test uses; the session is closed when the test ends."""
    name = f"matrix-{secrets.token_hex(6)}"
    yield name
    closed = await admin(proxy.port, "DELETE", f"/sessions/{name}")
    assert closed.status_code == 200, closed.text


def sse_url(proxy: ProxyProcess) -> str:
    return f"http://127.0.0.1:{proxy.port}/sse"


def keyed(arguments: dict[str, Any], key: Key | None, name: str) -> dict[str, Any]:
    """A tool call's arguments, naming the session when the key travels as the `session_id` argument."""
    return {**arguments, "session_id": name} if key == "argument" else arguments


@asynccontextmanager
async def nothing_left_behind(proxy: ProxyProcess) -> AsyncGenerator[None]:
    """Fail unless every process this block starts (other than the proxy's own upstreams) is gone at its end."""
    before = descendants(os.getpid())
    yield
    started = descendants(os.getpid()) - before - {proxy.pid} - proxy.upstream_pids()
    await wait_until(lambda: not any(is_alive(pid) for pid in started), what=f"the clients' processes {started}")


async def remember(client: Client, value: str, **arguments: Any) -> list[str]:
    return structured(await client.call_tool("state_remember", {"value": value, **arguments}))


async def recall(client: Client, **arguments: Any) -> list[str]:
    return structured(await client.call_tool("state_recall", arguments))


async def whoami(client: Client, **arguments: Any) -> int:
    return structured(await client.call_tool("state_whoami", arguments))
