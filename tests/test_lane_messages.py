"""The message lane itself (`lane_messages.MessageLane`), in memory: its tasks never raise into the session's
task group, whatever the transport's writer does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from mcp.server.connection import Connection

from mcpstore_proxy.json_bytes import from_json, to_json
from mcpstore_proxy.lane_messages import MessageLane
from mcpstore_proxy.server import ProxyServer
from tests.conversation import NoClient
from tests.engines import running_engine
from tests.support import fixture_server, wait_until

pytestmark = pytest.mark.anyio

_VERSION = "2025-11-25"


def _request(request_id: int, method: str) -> bytes:
    return to_json({"jsonrpc": "2.0", "id": request_id, "method": method})


async def test_an_answer_the_transport_fails_to_write_leaves_the_lane_serving_the_session(tmp_path: Path) -> None:
    written: list[bytes] = []
    failed = anyio.Event()

    async def broken(body: bytes) -> None:
        failed.set()
        raise RuntimeError("the transport's writer broke")

    async def working(body: bytes) -> None:
        written.append(body)

    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        connection = Connection(NoClient(), protocol_version=_VERSION)
        lane = MessageLane(ProxyServer(harness.engine), "s", lambda: connection)
        try:
            async with lane.running():  # a task that raised would end this block with its error
                assert not lane.take(_request(0, "initialize"), working)  # the first request decides the era
                assert lane.take(_request(1, "tools/list"), broken)
                with anyio.fail_after(10):
                    await failed.wait()
                assert lane.take(_request(2, "tools/list"), working)
                await wait_until(lambda: bool(written), what="the second listing's answer")
        finally:
            await connection.exit_stack.aclose()
    answer = cast("dict[str, Any]", from_json(written[0]))
    assert answer["id"] == 2
    assert "state_echo" in {tool["name"] for tool in answer["result"]["tools"]}
    assert lane.listings_served == 2
