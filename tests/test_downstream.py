"""The clients behind the MCP face (mcpstore_proxy/downstream.py): what a handshake-era client's connection keeps
once its handshake is done.

Connections are the SDK's own, as its runner leaves them after `initialize`; the engine's upstreams are in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import types
from mcp.server.connection import Connection

from mcpstore_proxy.downstream import Caller, Downstream
from mcpstore_proxy.principals import ANONYMOUS
from tests.conversation import NoClient
from tests.engines import running_engine
from tests.support import fixture_server

pytestmark = pytest.mark.anyio

_VERSION = "2025-11-25"


def _connection(session_id: str, client: str, capabilities: types.ClientCapabilities) -> Connection:
    params = types.InitializeRequestParams(
        protocol_version=_VERSION,
        capabilities=capabilities,
        client_info=types.Implementation(name=client, version="1.0"),
    )
    return Connection(NoClient(), protocol_version=_VERSION, session_id=session_id, client_params=params)


async def test_clients_that_said_alike_in_their_handshake_share_one_copy_of_it_and_keep_their_own_keys(
    tmp_path: Path,
) -> None:
    roots = types.ClientCapabilities(roots=types.RootsCapability(list_changed=True))
    alice, bob = _connection("a", "agent", roots), _connection("b", "agent", roots)
    other = _connection("c", "other-agent", types.ClientCapabilities())
    assert alice.client_params is not bob.client_params

    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        downstream = Downstream(harness.engine)
        for connection in (alice, bob, other):
            downstream.initialized(Caller(None, connection, _VERSION))

        assert alice.client_params is bob.client_params
        assert alice.client_capabilities is bob.client_capabilities
        assert bob.client_capabilities is not None
        assert bob.client_capabilities.roots is not None
        assert other.client_params is not alice.client_params  # told something else: its own copy
        assert other.client_params is not None
        assert other.client_params.client_info.name == "other-agent"
        keys = {downstream.adopt(Caller(None, connection, _VERSION)) for connection in (alice, bob, other)}
        assert len(keys) == 3  # one session each, as before
        for connection in (alice, bob, other):
            await connection.exit_stack.aclose()


async def test_a_legacy_sse_connection_is_found_by_its_session_once_adopted_and_forgotten_when_it_ends(
    tmp_path: Path,
) -> None:
    session = "0123456789abcdef0123456789abcdef"
    legacy = Connection(NoClient(), protocol_version=_VERSION)  # no Mcp-Session-Id: a legacy SSE connection
    post: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/messages/",
        "query_string": f"session_id={session}".encode(),
        "headers": [],
        "mcpstore_proxy.principal": ANONYMOUS,  # as the gate marks a request it let through
    }
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        downstream = Downstream(harness.engine)
        assert downstream.legacy(session) is None  # not before it is adopted
        downstream.adopt(Caller(post, legacy, _VERSION))
        assert downstream.legacy(session) is legacy
        assert downstream.legacy("f" * 32) is None
        await legacy.exit_stack.aclose()
        assert downstream.legacy(session) is None
