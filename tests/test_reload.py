"""Hot reload (`reload`): the config file read again and only its difference applied, while real clients hold
sessions. Through `POST /admin/reload` and the file watcher (`watch_config`) on the proxy served in process
(upstreams in memory); SIGHUP on a real proxy process.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client, MCPError, types

from mcpstore_proxy.config import ProxySettings, load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import SHUTTING_DOWN, ConfigError
from mcpstore_proxy.reload import Reloader, reload_in_background
from tests.conversation import structured
from tests.held_call import HeldCall
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import (
    admin,
    alice_and_bob_config,
    connect,
    descendants,
    fixture_server,
    is_alive,
    running_proxy,
    stdio_parameters,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.anyio

_OPERATOR = "operator-token-0123456789"


class _Warnings:
    """The log messages at warning level that the proxy sent a client."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    async def __call__(self, params: types.LoggingMessageNotificationParams) -> None:
        if params.level == "warning":
            self.messages.append(str(params.data))


async def _tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


async def _reload(port: int, **headers: str) -> Any:
    answer = await admin(port, "POST", "/reload", **headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_adding_removing_and_changing_upstreams_leaves_two_clients_sessions_with_another_one_as_they_were(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        {"keep": fixture_server("keep"), "gone": fixture_server("gone"), "changed": fixture_server("changed")},
    )
    alice_warnings, bob_warnings = _Warnings(), _Warnings()
    async with (
        running_app(config) as proxy,
        connect(proxy.url, logging_callback=alice_warnings) as alice,
        connect(proxy.url, logging_callback=bob_warnings) as bob,
    ):
        await alice.call_tool("keep_remember", {"value": "alice's"})
        await bob.call_tool("keep_remember", {"value": "bob's"})
        alice_keep = structured(await alice.call_tool("keep_whoami", {}))
        bob_keep = structured(await bob.call_tool("keep_whoami", {}))
        await alice.call_tool("changed_remember", {"value": "gone with the change"})
        old_changed = structured(await alice.call_tool("changed_whoami", {}))

        write_config(
            tmp_path,
            {
                "keep": fixture_server("keep"),
                "changed": fixture_server("changed", call_timeout_seconds=60),
                "new": fixture_server("new"),
            },
        )
        result = await _reload(proxy.port)

        assert result == {
            "added": ["new"],
            "removed": ["gone"],
            "restarted": ["changed"],
            "unchanged": ["keep"],
            "needs_restart": [],
        }
        await wait_until(lambda: _lists(alice, "new_echo"), timeout=10, what="the new upstream's tools to be listed")
        assert structured(await bob.call_tool("new_echo", {"text": "hello"})) == "hello"
        assert not any(name.startswith("gone_") for name in await _tool_names(alice))
        # The sessions with `keep`: the same instances, their state intact, nobody warned.
        assert structured(await alice.call_tool("keep_recall", {})) == ["alice's"]
        assert structured(await bob.call_tool("keep_recall", {})) == ["bob's"]
        assert structured(await alice.call_tool("keep_whoami", {})) == alice_keep
        assert structured(await bob.call_tool("keep_whoami", {})) == bob_keep
        assert proxy.upstreams.is_alive(alice_keep)
        assert proxy.upstreams.is_alive(bob_keep)
        # The changed upstream: a fresh session, and the client that held one hears that its state was reset.
        assert structured(await alice.call_tool("changed_recall", {})) == []
        assert structured(await alice.call_tool("changed_whoami", {})) != old_changed
        await wait_until(lambda: not proxy.upstreams.is_alive(old_changed), what="the old 'changed' session to end")
        await wait_until(lambda: alice_warnings.messages != [], what="the warning that alice's state was reset")
        assert len(alice_warnings.messages) == 1
        assert "upstream 'changed' was restarted" in alice_warnings.messages[0]
        assert bob_warnings.messages == []
        assert "reloaded the config (admin): added new; removed gone; restarted changed" in proxy.log


async def _lists(client: Client, tool: str) -> bool:
    return tool in await _tool_names(client)


async def test_the_clients_of_a_changed_shared_upstream_are_warned_once_that_their_state_was_reset(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"team": fixture_server("team", session="shared")})
    warnings = _Warnings()
    async with running_app(config) as proxy, connect(proxy.url, logging_callback=warnings) as client:
        await client.call_tool("team_remember", {"value": "before"})

        write_config(tmp_path, {"team": fixture_server("team", session="shared", call_timeout_seconds=60)})
        assert (await _reload(proxy.port))["restarted"] == ["team"]

        assert structured(await client.call_tool("team_recall", {})) == []
        assert structured(await client.call_tool("team_recall", {})) == []
        # The SDK client runs each notification's callback in a task of its own: the warning can trail the result.
        await wait_until(lambda: warnings.messages != [], what="the warning that the state was reset")
        assert len(warnings.messages) == 1
        assert "upstream 'team' was restarted" in warnings.messages[0]


async def test_an_invalid_edit_is_refused_with_the_start_up_error_and_the_running_config_keeps_serving(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        await client.call_tool("state_remember", {"value": "kept"})
        config.write_text(yaml.safe_dump({"mcpServers": {"state": {"args": ["no command"]}, "new": {}}}))
        with pytest.raises(ConfigError) as at_start:
            load_settings(config)

        refused = await admin(proxy.port, "POST", "/reload")

        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == at_start.value.message
        logged = [line for line in proxy.capture.lines if "config error" in line]
        assert logged == [
            f"ERROR mcpstore_proxy.reload: config error: {at_start.value.message} "
            "(reload refused; the running config stays)"
        ]
        assert structured(await client.call_tool("state_recall", {})) == ["kept"]
        assert "new_echo" not in await _tool_names(client)


async def test_an_empty_file_is_refused_so_an_editor_caught_mid_save_removes_no_upstream(tmp_path: Path) -> None:
    # A file truncated and not yet written again loads as a config with no upstreams: applying it would remove all.
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        await client.call_tool("state_remember", {"value": "kept"})
        for blank in ("", "  \n\n"):
            config.write_text(blank)

            refused = await admin(proxy.port, "POST", "/reload")

            assert refused.status_code == 400
            assert "is empty" in refused.json()["error"]["message"]
            assert "mcpServers: {}" in refused.json()["error"]["message"]
            assert structured(await client.call_tool("state_recall", {})) == ["kept"]
        config.write_text(yaml.safe_dump({"mcpServers": {}}))
        assert (await admin(proxy.port, "POST", "/reload")).json()["removed"] == ["state"]


async def test_a_removed_upstream_lets_its_call_in_flight_finish_but_takes_no_new_one(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"leaving": fixture_server("leaving"), "staying": fixture_server("staying")},
        shutdown_grace_seconds=60,
    )
    held = HeldCall()  # the call stays in flight until the test releases it
    async with (
        running_app(config) as proxy,
        connect(proxy.url, sampling_callback=held.answer_once_released) as busy,
        connect(proxy.url) as newcomer,
    ):
        leaving = structured(await busy.call_tool("leaving_whoami", {}))

        async with held.in_flight(busy, "leaving_ask"):
            write_config(tmp_path, {"staying": fixture_server("staying")}, shutdown_grace_seconds=60)
            assert (await _reload(proxy.port))["removed"] == ["leaving"]

            with pytest.raises(MCPError) as refused:
                await newcomer.call_tool("leaving_echo", {"text": "too late"})
            assert "leaving_echo" in refused.value.message
            assert proxy.upstreams.is_alive(leaving)
            held.release()
        assert held.answers == ["answered"]
        await wait_until(lambda: not proxy.upstreams.is_alive(leaving), what="the removed upstream to close")
        assert structured(await newcomer.call_tool("staying_echo", {"text": "fine"})) == "fine"


async def test_options_that_need_a_restart_are_named_in_the_result_and_one_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        write_config(
            tmp_path,
            {"state": fixture_server("state")},
            host="localhost",
            port=1,  # the command line's port stands (in-process: the test's free port), so no change
            session_idle_timeout_seconds=60,
            shutdown_grace_seconds=5,
        )
        result = await _reload(proxy.port)

        assert result["needs_restart"] == ["host", "session_idle_timeout_seconds"]
        assert result["unchanged"] == ["state"]
        warnings = [line for line in proxy.capture.lines if "take effect only when the proxy restarts" in line]
        assert warnings == [
            "WARNING mcpstore_proxy.reload: the config changes host, session_idle_timeout_seconds, which take "
            "effect only when the proxy restarts"
        ]
        # Reported again while they still differ from what runs; the live option now matches.
        assert (await _reload(proxy.port))["needs_restart"] == ["host", "session_idle_timeout_seconds"]


async def test_a_service_added_through_the_admin_api_outlives_a_reload_and_keeps_its_name(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, allow_stdio_services_via_api=True)
    async with running_app(config) as proxy:
        added = await admin(proxy.port, "POST", "/services", {"name": "extra", **fixture_server("extra")})
        assert added.status_code == 200, added.text

        assert (await _reload(proxy.port))["removed"] == []
        names = [service["name"] for service in (await admin(proxy.port, "GET", "/services")).json()]
        assert names == ["state", "extra"]

        write_config(
            tmp_path,
            {"state": fixture_server("state"), "extra": fixture_server("extra")},
            allow_stdio_services_via_api=True,
        )
        clash = await admin(proxy.port, "POST", "/reload")
        assert clash.status_code == 400
        assert "mcpServers.extra: a service named 'extra' was added at run time" in clash.json()["error"]["message"]


async def test_reloading_needs_an_admin(tmp_path: Path) -> None:
    config = alice_and_bob_config(
        tmp_path, alice_token="alice-token-0123456789", bob_token="bob-token-0123456789", operator_token=_OPERATOR
    )
    async with running_app(config) as proxy:
        assert (await admin(proxy.port, "POST", "/reload")).status_code == 401
        refused = await admin(proxy.port, "POST", "/reload", Authorization="Bearer alice-token-0123456789")
        assert refused.status_code == 403
        assert "not an admin" in refused.json()["error"]["message"]
        assert (await _reload(proxy.port, Authorization=f"Bearer {_OPERATOR}"))["unchanged"] == ["state"]


async def test_a_reload_during_the_drain_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=60)
    held = HeldCall()  # the call stays in flight, and so the drain lasts, until the test releases it
    async with (
        running_app(config) as proxy,
        connect(proxy.url, sampling_callback=held.answer_once_released) as client,
        held.in_flight(client, "state_ask"),
    ):
        assert (await _reload(proxy.port))["unchanged"] == ["state"]  # the same request, before the drain

        await proxy.start_draining()
        refused = await admin(proxy.port, "POST", "/reload")
        held.release()
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == SHUTTING_DOWN
        assert "is shutting down and takes no reload" in refused.json()["error"]["message"]


async def test_a_reload_on_sighup_or_a_file_change_that_fails_unforeseen_is_logged_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Raised, it would end the task group the signal watcher runs in, and with it the proxy.
    config = write_config(tmp_path, {"state": fixture_server("state")})

    def broken() -> ProxySettings:
        raise RuntimeError("a bug in loading")

    async with ProxyEngine(load_settings(config), transports=MemoryUpstreams()) as engine:
        await reload_in_background(Reloader(engine, load=broken), "signal")
        assert "the reload (signal) failed" in caplog.text
        assert "RuntimeError: a bug in loading" in caplog.text

        write_config(tmp_path, {"state": fixture_server("state"), "new": fixture_server("new")})
        await reload_in_background(engine.reloader, "signal")
        assert set(engine.settings.enabled_servers) == {"state", "new"}


async def test_with_watch_config_an_edit_of_the_file_is_applied(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"keep": fixture_server("keep")}, watch_config=True)
    async with running_app(config) as proxy, _holding_a_session(proxy.url) as (client, keep):
        # Saved the way editors save: a new file renamed over the old one.
        draft = write_config(
            tmp_path, {"keep": fixture_server("keep"), "new": fixture_server("new")}, "draft.yaml", watch_config=True
        )
        draft.replace(config)

        await wait_until(lambda: _lists(client, "new_echo"), timeout=30, what="the watcher to add 'new'")
        assert "reloaded the config (watch): added new" in proxy.log
        await _still_holds(client, keep, proxy.upstreams.is_alive)

        config.write_text("mcpServers: [not, a, mapping")
        await wait_until(lambda: "config error" in proxy.log, timeout=30, what="the broken edit to be refused")
        await _still_holds(client, keep, proxy.upstreams.is_alive)
        assert structured(await client.call_tool("new_echo", {"text": "still"})) == "still"


@asynccontextmanager
async def _holding_a_session(url: str) -> AsyncGenerator[tuple[Client, int]]:
    """A client with state in its session with `keep`, and that session's pid (in memory: its identity)."""
    async with connect(url) as client:
        await client.call_tool("keep_remember", {"value": "still here"})
        yield client, structured(await client.call_tool("keep_whoami", {}))


async def _still_holds(client: Client, keep: int, alive: Callable[[int], bool] = is_alive) -> None:
    """The session with `keep` is still the instance `keep` (a pid, unless `alive` says otherwise), state intact."""
    assert structured(await client.call_tool("keep_whoami", {})) == keep
    assert structured(await client.call_tool("keep_recall", {})) == ["still here"]
    assert alive(keep)


# A real process: the signal.


async def test_sighup_reloads_the_config_and_the_sessions_and_processes_of_other_upstreams_survive(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"keep": fixture_server("keep")})
    async with running_proxy(config) as proxy, _holding_a_session(proxy.url) as (client, pid):
        write_config(tmp_path, {"keep": fixture_server("keep"), "new": fixture_server("new")})

        os.kill(proxy.pid, signal.SIGHUP)

        await wait_until(lambda: _lists(client, "new_echo"), timeout=30, what="the reload to add 'new'")
        assert "reloaded the config (signal): added new" in proxy.log
        assert structured(await client.call_tool("new_echo", {"text": "hi"})) == "hi"
        await _still_holds(client, pid)
        assert proxy.process.returncode is None


async def test_over_stdio_sighup_reloads_the_config_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"keep": fixture_server("keep")})
    before = descendants(os.getpid())
    async with Client(stdio_parameters(config), mode="legacy") as client:
        await client.call_tool("keep_remember", {"value": "still here"})
        pid = structured(await client.call_tool("keep_whoami", {}))
        [proxy] = [child for child in descendants(os.getpid()) - before if _is_stdio_proxy(child)]
        write_config(tmp_path, {"keep": fixture_server("keep"), "new": fixture_server("new")})

        os.kill(proxy, signal.SIGHUP)

        await wait_until(lambda: _lists(client, "new_echo"), timeout=30, what="the reload to add 'new'")
        await _still_holds(client, pid)
    await wait_until(lambda: not descendants(os.getpid()) - before, what="the stdio proxy's processes to exit")


def _is_stdio_proxy(pid: int) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mcpstore_proxy" in arguments and b"stdio" in arguments
