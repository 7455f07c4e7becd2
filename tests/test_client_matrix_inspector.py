"""The client matrix, the MCP Inspector CLI (one process per call) and its `mcpdo` daemon (one connection across
invocations), against a real proxy process: separate processes share state only through a session key, and mcpdo
keeps one connection's state across invocations and a named session's across reconnects. tests/matrix.py holds
the shared proxy and explains who keeps what.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.matrix import HEADER, KEYS, Key, Probe, keyed

# The module's fixtures, which pytest finds by name.
from tests.matrix import anyio_backend as anyio_backend
from tests.matrix import probe as probe
from tests.matrix import proxy as proxy
from tests.matrix import session_name as session_name
from tests.support import ProxyProcess, stop_pid
from tests.test_inspector import inspector, mcpdo

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("key", KEYS)
async def test_inspector_cli_calls_in_separate_processes_share_state_only_through_a_session_key(
    proxy: ProxyProcess, probe: Probe, session_name: str, tmp_path: Path, key: Key
) -> None:
    value = probe.value("kept")

    async def tool(name: str, arguments: dict[str, Any], key: Key | None) -> Any:
        header = ["--header", f"{HEADER}: {session_name}"] if key == "header" else []
        called = await inspector(
            tmp_path,
            proxy.url,
            "--method",
            "tools/call",
            "--tool-name",
            name,
            "--tool-args-json",
            json.dumps(keyed(arguments, key, session_name)),
            *header,
        )
        assert not called.get("isError"), called
        return called["structuredContent"]["result"]

    assert await tool("state_remember", {"value": value}, key) == [value]
    assert await tool("state_recall", {}, key) == [value]
    assert await tool("state_recall", {}, None) == [], "a keyless call is a fresh connection, with a fresh session"


async def test_mcpdo_keeps_one_connections_state_across_invocations_and_a_named_one_across_reconnects(
    proxy: ProxyProcess, probe: Probe, session_name: str, tmp_path: Path
) -> None:
    one, two, kept = probe.value("one"), probe.value("two"), probe.value("kept")

    async def tool(connection: str, name: str, **arguments: Any) -> Any:
        output = await mcpdo(
            tmp_path,
            "--connection",
            connection,
            "--format",
            "json",
            "tools/call",
            name,
            "--tool-args-json",
            json.dumps(arguments),
        )
        called = json.loads(output)
        assert not called.get("isError"), called
        return called["structuredContent"]["result"]

    await mcpdo(tmp_path, "connect", "--connection", "plain", proxy.url)
    daemon = re.search(r"Daemon pid (\d+)", await mcpdo(tmp_path, "daemon", "status"))
    assert daemon is not None
    daemon_pid = int(daemon.group(1))
    try:
        await tool("plain", "state_remember", value=one)
        assert await tool("plain", "state_remember", value=two) == [one, two]
        assert await tool("plain", "state_recall") == [one, two]

        header = f"{HEADER}: {session_name}"
        await mcpdo(tmp_path, "connect", "--connection", "named", proxy.url, "--header", header)
        assert await tool("named", "state_remember", value=kept) == [kept]
        await mcpdo(tmp_path, "disconnect", "named")
        await mcpdo(tmp_path, "connect", "--connection", "named-again", proxy.url, "--header", header)
        assert await tool("named-again", "state_recall") == [kept]
        assert await tool("plain", "state_recall") == [one, two]
    finally:
        await stop_pid(daemon_pid, what="the mcpdo daemon")
