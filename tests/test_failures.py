"""Failures never hang anything: crashes fail calls promptly, recover on the next call, and broken upstreams retry.

In process (`running_app`, upstreams in memory, where `crash` ends an instance mid-call), but for one test that
SIGKILLs a real upstream process from outside.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError, types
from mcp.types import INVALID_PARAMS

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import UPSTREAM_FAILED
from mcpstore_proxy.relay import SessionRelay
from mcpstore_proxy.upstream import UpstreamSession
from tests.conversation import structured
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import connect, fixture_server, running_proxy, wait_until, write_config

pytestmark = pytest.mark.anyio

_PROMPT_SECONDS = 2.0
"""A bound for "within about a second" that a loaded machine still meets."""


async def test_an_upstream_crash_fails_the_call_in_flight_promptly_naming_the_upstream(tmp_path: Path) -> None:
    # A real process, killed from outside: its pipes close under the proxy, with no answer and no goodbye.
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_proxy(config) as proxy, connect(proxy.url) as client:
        pid = structured(await client.call_tool("state_whoami", {}))
        failure: list[MCPError] = []
        marker = tmp_path / "sleeping"

        async def slow_call() -> None:
            try:
                await client.call_tool("state_sleep", {"seconds": 60, "started_marker": str(marker)})
            except MCPError as error:
                failure.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            await wait_until(marker.exists, what="the upstream to start the slow call")
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda: bool(failure), timeout=_PROMPT_SECONDS, what="the call in flight to fail")

        assert failure, "the call in flight should have failed"
        assert failure[0].code == UPSTREAM_FAILED
        assert "'state'" in failure[0].message


async def test_an_upstream_crash_during_one_call_fails_another_call_in_flight_promptly_naming_the_upstream(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        upstream = structured(await client.call_tool("state_whoami", {}))
        failures: dict[str, MCPError] = {}
        marker = tmp_path / "sleeping"

        async def call(tool: str, arguments: dict[str, Any]) -> None:
            try:
                await client.call_tool(tool, arguments)
            except MCPError as error:
                failures[tool] = error

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "state_sleep", {"seconds": 60, "started_marker": str(marker)})
                await wait_until(marker.exists, what="the upstream to start the slow call")
                tg.start_soon(call, "state_crash", dict[str, Any]())
                await wait_until(
                    lambda: "state_sleep" in failures, timeout=_PROMPT_SECONDS, what="the call in flight to fail"
                )

        await wait_until(lambda: not proxy.upstreams.is_alive(upstream), what="the crashed instance to be gone")
        assert set(failures) == {"state_sleep", "state_crash"}
        for error in failures.values():
            assert error.code == UPSTREAM_FAILED
            assert "'state'" in error.message


async def test_the_next_call_after_a_crash_gets_a_fresh_session_and_a_reset_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    warnings: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        warnings.append(params)

    async with running_app(config) as proxy, connect(proxy.url, logging_callback=on_log) as client:
        await client.call_tool("state_remember", {"value": "lost soon"})
        upstream = structured(await client.call_tool("state_whoami", {}))
        with pytest.raises(MCPError) as crashed:
            await client.call_tool("state_crash", {})
        assert crashed.value.code == UPSTREAM_FAILED
        await wait_until(lambda: not proxy.upstreams.is_alive(upstream), what="the crashed instance to be gone")

        assert structured(await client.call_tool("state_recall", {})) == []
        fresh = structured(await client.call_tool("state_whoami", {}))
        assert fresh != upstream
        assert proxy.upstreams.is_alive(fresh)
        assert [w.level for w in warnings] == ["warning"]
        assert "'state'" in str(warnings[0].data)
        assert "reset" in str(warnings[0].data)
        await client.call_tool("state_remember", {"value": "kept again"})
        assert structured(await client.call_tool("state_recall", {})) == ["kept again"]
        assert len(warnings) == 1


async def test_an_upstream_that_fails_to_start_leaves_the_others_serving_and_logs_why(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"good": fixture_server("good"), "broken": fixture_server("broken", "--fail-start", "missing API key XYZ")},
    )
    async with running_app(config) as proxy, connect(proxy.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "good_echo" in names
        assert not any(name.startswith("broken_") for name in names)
        assert "upstream 'broken' failed to start" in proxy.log
        assert "missing API key XYZ" in proxy.log
        with pytest.raises(MCPError) as unlisted:
            await client.call_tool("broken_echo", {"text": "x"})
        assert unlisted.value.code == INVALID_PARAMS
        assert structured(await client.call_tool("good_echo", {"text": "served"})) == "served"


async def test_a_failed_upstream_is_retried_and_its_tools_appear_with_a_list_changed_notice(tmp_path: Path) -> None:
    ready_flag = tmp_path / "ready"
    config = write_config(
        tmp_path, {"good": fixture_server("good"), "late": fixture_server("late", "--fail-until", str(ready_flag))}
    )
    notices: list[object] = []

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            notices.append(message)

    async with running_app(config) as proxy, connect(proxy.url, message_handler=on_message) as client:
        assert not any(t.name.startswith("late_") for t in (await client.list_tools()).tools)
        assert f"waiting for {ready_flag}" in proxy.log  # the first attempt failed, and said why
        ready_flag.touch()

        async def late_tools_listed() -> bool:
            return any(t.name == "late_echo" for t in (await client.list_tools()).tools)

        await wait_until(late_tools_listed, timeout=30, what="the retried upstream's tools")
        assert structured(await client.call_tool("late_echo", {"text": "finally"})) == "finally"
        await wait_until(lambda: bool(notices), timeout=5, what="a tools/list_changed notification")


async def test_a_fault_in_what_follows_a_sessions_end_is_logged_and_never_reaches_the_task_group_that_runs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail(session: UpstreamSession) -> None:
        raise RuntimeError("a fault after the end")

    upstreams = MemoryUpstreams()
    session = UpstreamSession(
        "up",
        UpstreamConfig.model_validate(fixture_server("up")),
        start_timeout_seconds=10,
        relay=SessionRelay("up"),
        declared=frozenset(),
        label="a spare",
        on_end=fail,
        transports=upstreams,
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            await session.client()
            await session.aclose("the test is over")

    assert "upstream 'up': could not handle the end of a spare" in caplog.text
    assert "a fault after the end" in caplog.text
    assert not upstreams.live
