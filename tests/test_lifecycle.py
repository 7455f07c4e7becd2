"""The lifecycle around sessions, tried as a user and an operator would, through the real proxy process:
admin requests that once stopped the proxy, start-up that waits for nobody, shutdown that drains and leaves no
process behind, and limits that answer at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from mcp import Client, MCPError, types

from mcpstore_proxy.errors import SESSION_REFUSED, SHUTTING_DOWN
from tests.conversation import structured
from tests.support import (
    PROJECT_ROOT,
    admin,
    closed_gate,
    connect,
    fixture_server,
    is_alive,
    is_draining,
    running_proxy,
    stdio_parameters,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.anyio

_PROMPT_SECONDS = 10.0
"""A bound for "at once" that a loaded 2-core machine still meets; the real figures are in bench/lifecycle.py."""


@contextmanager
def tarpit() -> Generator[int]:
    """A TCP listener that accepts connections and never answers; yields its port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def hanging_pids(gate: Path) -> set[int]:
    return {int(path.name.removeprefix("hanging-")) for path in gate.glob("hanging-*")}


async def test_adding_then_removing_a_never_answering_upstream_leaves_the_proxy_serving(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    with tarpit() as port:
        async with running_proxy(config) as proxy, connect(proxy.url) as client:
            added = await admin(
                proxy.port, "POST", "/services", {"name": "tarpit", "url": f"http://127.0.0.1:{port}/mcp"}
            )
            assert added.status_code == 200
            assert added.json()[0]["state"] == "starting"
            removed = await admin(proxy.port, "DELETE", "/services/tarpit")
            assert removed.status_code == 200, removed.text
            assert proxy.process.returncode is None
            assert structured(await client.call_tool("state_echo", {"text": "still here"})) == "still here"
            async with connect(proxy.url) as newcomer:
                assert structured(await newcomer.call_tool("state_echo", {"text": "me too"})) == "me too"
            listed = await admin(proxy.port, "GET", "/services")
            assert [service["name"] for service in listed.json()] == ["state"]


async def test_restarting_a_slow_starting_upstream_twice_leaves_the_proxy_serving(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    config = write_config(
        tmp_path, {"state": fixture_server("state"), "slow": fixture_server("slow", "--start-gate", str(gate))}
    )
    async with running_proxy(config) as proxy, connect(proxy.url) as client:
        (gate / "slow").touch()
        assert (await admin(proxy.port, "POST", "/services/slow/restart")).status_code == 200
        await wait_until(lambda: len(hanging_pids(gate)) == 1, what="the restarted upstream to hang in its start")
        second = await admin(proxy.port, "POST", "/services/slow/restart")
        assert second.status_code == 200, second.text
        await wait_until(lambda: len(hanging_pids(gate)) == 2, what="the second restart to start it afresh")
        first_start = min(hanging_pids(gate), key=lambda pid: (gate / f"hanging-{pid}").stat().st_mtime)
        await wait_until(lambda: not is_alive(first_start), what="the abandoned start's process to be stopped")
        assert proxy.process.returncode is None
        assert structured(await client.call_tool("state_echo", {"text": "unaffected"})) == "unaffected"
        (gate / "slow").unlink()
        assert (await admin(proxy.port, "POST", "/services/slow/restart")).status_code == 200
        assert (await admin(proxy.port, "POST", "/services/slow/wait?timeout=60")).json()["state"] == "ready"
        assert structured(await client.call_tool("slow_echo", {"text": "back"})) == "back"


def config_with_a_hanging_upstream(tmp_path: Path, gate: Path) -> Path:
    """'state', and 'slow', which hangs in its start behind `gate` (giving up after 3 s, then retrying)."""
    return write_config(
        tmp_path,
        {"state": fixture_server("state"), "slow": fixture_server("slow", "--start-gate", str(gate))},
        upstream_start_timeout_seconds=3,
    )


class ToolListChanges:
    """Keeps the tools/list_changed notices a client receives (its `message_handler`)."""

    def __init__(self) -> None:
        self.seen: list[types.ToolListChangedNotification] = []

    async def on_message(self, message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.seen.append(message)


async def test_health_answers_while_an_upstream_hangs_in_start_up_and_its_tools_arrive_later(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    config = config_with_a_hanging_upstream(tmp_path, gate)
    notices = ToolListChanges()

    launched = time.monotonic()
    async with running_proxy(config, wait_for_upstreams=False) as proxy:
        answered_after = time.monotonic() - launched
        assert answered_after < _PROMPT_SECONDS
        await wait_until(lambda: bool(hanging_pids(gate)), what="the slow upstream to hang")
        async with connect(proxy.url, message_handler=notices.on_message) as client:
            assert all(is_alive(pid) for pid in hanging_pids(gate))
            assert not any(tool.name.startswith("slow_") for tool in (await client.list_tools()).tools)
            (gate / "slow").unlink()

            async def slow_tools_listed() -> bool:
                return "slow_echo" in {tool.name for tool in (await client.list_tools()).tools}

            await wait_until(slow_tools_listed, timeout=30, what="the slow upstream's tools")
            await wait_until(lambda: bool(notices.seen), timeout=5, what="a tools/list_changed notice")
            assert structured(await client.call_tool("slow_echo", {"text": "late"})) == "late"


async def test_stdio_answers_initialize_while_an_upstream_hangs_and_lists_it_once_it_is_up(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    config = config_with_a_hanging_upstream(tmp_path, gate)
    notices = ToolListChanges()

    launched = time.monotonic()
    async with Client(stdio_parameters(config), mode="legacy", message_handler=notices.on_message) as client:
        assert time.monotonic() - launched < _PROMPT_SECONDS
        await wait_until(lambda: bool(hanging_pids(gate)), what="the slow upstream to hang")
        (gate / "slow").unlink()

        async def every_tool_listed() -> bool:
            names = {tool.name for tool in (await client.list_tools()).tools}
            return {"slow_echo", "state_echo"} <= names

        await wait_until(every_tool_listed, timeout=30, what="both upstreams' tools")
        await wait_until(lambda: bool(notices.seen), timeout=5, what="a tools/list_changed notice")


async def test_sigterm_during_start_up_leaves_no_process_behind(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    config = write_config(tmp_path, {"slow": fixture_server("slow", "--start-gate", str(gate))})
    async with running_proxy(config, wait_for_upstreams=False) as proxy:
        await wait_until(lambda: bool(hanging_pids(gate)), what="the upstream to hang in its start")
        hanging = hanging_pids(gate)
        assert await proxy.stop() == 0
    await wait_until(lambda: not any(is_alive(pid) for pid in hanging), what="the starting upstream to be stopped")
    assert "Traceback" not in proxy.log


async def test_stdio_eof_during_start_up_ends_the_proxy_promptly_and_leaves_no_process(tmp_path: Path) -> None:
    gate = closed_gate(tmp_path)
    config = write_config(tmp_path, {"slow": fixture_server("slow", "--start-gate", str(gate))})
    stderr = tmp_path / "stderr.txt"
    async with stdio_proxy(config, stderr, stdout=subprocess.DEVNULL) as process:
        await wait_until(lambda: bool(hanging_pids(gate)), what="the upstream to hang in its start")
        hanging = hanging_pids(gate)
        assert process.stdin is not None
        await process.stdin.aclose()
        closed = time.monotonic()
        with anyio.fail_after(30):
            assert await process.wait() == 0
        assert time.monotonic() - closed < _PROMPT_SECONDS
        await wait_until(lambda: not any(is_alive(pid) for pid in hanging), what="the starting upstream to stop")
        assert "Traceback" not in stderr.read_text()


async def test_stdio_sigterm_while_the_client_keeps_stdin_open_ends_the_proxy_promptly(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    stderr = tmp_path / "stderr.txt"
    async with stdio_proxy(config, stderr) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        await process.stdin.send(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}).encode() + b"\n"
        )
        with anyio.fail_after(30):
            assert b'"id":1' in await process.stdout.receive()
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        with anyio.fail_after(30):
            assert await process.wait() == 0
        assert time.monotonic() - signalled < _PROMPT_SECONDS
        assert "Traceback" not in stderr.read_text()


async def test_stdio_sigterm_lets_a_call_in_the_lane_finish_and_answer_then_ends_the_proxy(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    started = tmp_path / "started"
    stderr = tmp_path / "stderr.txt"
    async with stdio_proxy(config, stderr) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        lines = _lines(process.stdout)
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        arguments = {"seconds": 1, "started_marker": str(started)}
        await process.stdin.send(
            b"".join(
                json.dumps(message).encode() + b"\n"
                for message in (
                    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
                    {"jsonrpc": "2.0", "method": "notifications/initialized"},
                    {"jsonrpc": "2.0", "id": 2, "method": "ping"},
                )
            )
        )
        with anyio.fail_after(30):
            assert [json.loads(await anext(lines))["id"] for _ in range(2)] == [1, 2]
        call = {"name": "state_sleep", "arguments": arguments}
        await process.stdin.send(
            json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call}).encode() + b"\n"
        )
        await wait_until(started.exists, what="the call to reach its upstream")
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            while "id" not in (answer := json.loads(await anext(lines))):
                pass  # a notice (a log entry, a list change) before it
        assert (answer["id"], answer["result"]["structuredContent"]) == (3, {"result": "slept"})
        with anyio.fail_after(30):
            assert await process.wait() == 0
        assert "Traceback" not in stderr.read_text()


@asynccontextmanager
async def stdio_proxy(
    config: Path, stderr: Path, *, stdout: int = subprocess.PIPE
) -> AsyncGenerator[anyio.abc.Process]:
    """`mcpstore-proxy stdio` over `config` as a process (its stderr to `stderr`), killed if the block leaves it
    running."""
    command = [sys.executable, "-m", "mcpstore_proxy", "stdio", "--config", str(config)]
    with stderr.open("w") as log:
        process = await anyio.open_process(command, stdout=stdout, stderr=log, cwd=PROJECT_ROOT)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[bytes]:
    pending = b""
    while True:
        *lines, pending = (pending + await stream.receive()).split(b"\n")
        for line in lines:
            yield line


class RawSession:
    """A Streamable HTTP MCP session driven with plain HTTP requests (no SDK client, which re-opens its event stream
    and raises when the server ends the session)."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url
        self._headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    async def open(self) -> None:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        opened = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        self._headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def post(self, message: dict[str, Any]) -> httpx2.Response:
        return await self._http.post(self._url, json=message, headers=self._headers)

    async def call_tool(self, request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The JSON-RPC answer to a tools/call (a result or an error)."""
        answer = await self.post(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": name, "arguments": arguments},
            }
        )
        data = [line.removeprefix("data: ") for line in answer.text.splitlines() if line.startswith("data: ")]
        return json.loads(data[-1]) if data else answer.json()


async def test_sigterm_lets_calls_in_flight_finish_refuses_new_work_and_exits_cleanly(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=30)
    markers = [tmp_path / f"started-{index}" for index in range(3)]
    answers: list[dict[str, Any]] = []
    async with running_proxy(config) as proxy, httpx2.AsyncClient(timeout=60) as http:
        session = RawSession(http, proxy.url)
        await session.open()
        too_late: dict[str, Any] = {}
        newcomer: httpx2.Response | None = None
        async with anyio.create_task_group() as tg:

            async def long_call(index: int) -> None:
                arguments = {"seconds": 8, "started_marker": str(markers[index])}
                answers.append(await session.call_tool(index + 1, "state_sleep", arguments))

            for index in range(3):
                tg.start_soon(long_call, index)
            await wait_until(lambda: all(marker.exists() for marker in markers), what="the calls to start")
            assert proxy.process.pid is not None
            os.kill(proxy.process.pid, signal.SIGTERM)
            await wait_until(lambda: is_draining(proxy.port), what="the proxy to start draining")
            too_late = await session.call_tool(9, "state_echo", {"text": "too late"})
            newcomer = await RawSession(http, proxy.url).post(
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
            )
        assert [answer["result"]["structuredContent"] for answer in answers] == [{"result": "slept"}] * 3
        assert too_late["error"]["code"] == SHUTTING_DOWN
        assert "shutting down" in too_late["error"]["message"]
        assert newcomer is not None
        assert newcomer.status_code == 503
        assert newcomer.json()["error"]["code"] == SHUTTING_DOWN
        assert await proxy.stop() == 0
    assert "Traceback" not in proxy.log
    assert "Exception in ASGI application" not in proxy.log


async def test_a_call_still_running_when_the_grace_period_ends_gets_an_error_and_the_proxy_exits(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=1)
    marker = tmp_path / "started"
    failures: list[MCPError] = []
    async with running_proxy(config) as proxy, connect(proxy.url) as client:

        async def endless_call() -> None:
            try:
                await client.call_tool("state_sleep", {"seconds": 600, "started_marker": str(marker)})
            except MCPError as error:
                failures.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(endless_call)
            await wait_until(marker.exists, what="the call to start")
            assert proxy.process.pid is not None
            os.kill(proxy.process.pid, signal.SIGTERM)
            await wait_until(lambda: bool(failures), timeout=20, what="the cut call's error")
        assert failures[0].code == SHUTTING_DOWN
        assert "grace period" in failures[0].message
        assert await proxy.stop() == 0
    assert "Traceback" not in proxy.log


async def test_a_second_sigterm_skips_the_grace_period(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=300)
    marker = tmp_path / "started"
    async with running_proxy(config) as proxy, connect(proxy.url) as client, anyio.create_task_group() as tg:

        async def endless_call() -> None:
            with suppress(MCPError):
                await client.call_tool("state_sleep", {"seconds": 600, "started_marker": str(marker)})

        tg.start_soon(endless_call)
        await wait_until(marker.exists, what="the call to start")
        assert proxy.process.pid is not None
        os.kill(proxy.process.pid, signal.SIGTERM)
        await wait_until(lambda: "draining" in proxy.log, what="the proxy to start draining")
        os.kill(proxy.process.pid, signal.SIGTERM)
        with anyio.fail_after(20):
            assert await proxy.process.wait() == 0


async def test_past_max_downstream_sessions_a_new_client_is_refused_at_once_naming_the_limit(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, max_downstream_sessions=2)
    async with running_proxy(config) as proxy, connect(proxy.url) as first, connect(proxy.url) as second:
        asked = time.monotonic()
        async with httpx2.AsyncClient() as http:
            refused = await http.post(
                proxy.url,
                json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                headers={"Accept": "application/json, text/event-stream"},
            )
        assert time.monotonic() - asked < _PROMPT_SECONDS
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == SESSION_REFUSED
        assert "max_downstream_sessions" in error["message"]
        assert structured(await first.call_tool("state_echo", {"text": "1"})) == "1"
        assert structured(await second.call_tool("state_echo", {"text": "2"})) == "2"
        assert "max_downstream_sessions" in proxy.log
