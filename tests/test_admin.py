"""The admin HTTP API: access rules, the stdio policy, services saved across restarts, and atomic saves.

The proxy runs in this process (`tests.inprocess.running_app`), its upstreams in memory. Off-loopback rules
follow the address the config binds (`host: 0.0.0.0`), which is still reached at 127.0.0.1. Only the
interrupted save needs a process of its own: it is killed mid-write.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import uvicorn
from anyio.from_thread import start_blocking_portal

from tests.conversation import structured
from tests.fixtures.stateful_server import build, parse
from tests.inprocess import running_app
from tests.support import admin, connect, fixture_server, free_port, wait_until, write_config

pytestmark = pytest.mark.anyio


class _ThreadHost:
    """The fixture server's host when it is served from a thread of this process (crash is not for it)."""

    @property
    def identity(self) -> int:
        return 0

    async def crash(self) -> None:
        raise RuntimeError("an HTTP fixture served in the test process cannot crash")


@asynccontextmanager
async def serving_fixture_over_http(name: str) -> AsyncGenerator[str]:
    """The stateful fixture server over Streamable HTTP on 127.0.0.1, served from a thread; yields its URL."""
    port = free_port()
    app = build(parse(["--name", name]), _ThreadHost()).streamable_http_app()
    # On a thread of its own, uvicorn leaves the test process's signal handlers alone.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    portal_context = start_blocking_portal(name="HTTP fixture server")
    portal = portal_context.__enter__()
    try:
        served = portal.start_task_soon(server.serve)
        try:
            await wait_until(lambda: server.started or served.done(), what="the HTTP fixture server to listen")
            assert server.started, f"the HTTP fixture server did not start: {served.exception()}"
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            server.should_exit = True
            await anyio.to_thread.run_sync(served.result, 30)
    finally:
        await anyio.to_thread.run_sync(portal_context.__exit__, None, None, None)


async def test_off_loopback_the_admin_api_needs_the_token(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"state": fixture_server("state")},
        host="0.0.0.0",
        auth={"mode": "none"},
        admin_token="s3cret-token-of-at-least-16",
    )
    async with running_app(config) as proxy:  # bound to every address, reached via 127.0.0.1
        assert (await admin(proxy.port, "GET", "/services")).status_code == 401
        wrong = await admin(proxy.port, "GET", "/services", Authorization="Bearer guess")
        assert wrong.status_code == 401
        assert "admin_token" in wrong.json()["error"]["message"]
        right = await admin(proxy.port, "GET", "/services", Authorization="Bearer s3cret-token-of-at-least-16")
        assert right.status_code == 200
        assert [service["name"] for service in right.json()] == ["state"]


async def test_off_loopback_without_a_token_the_admin_api_is_off(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, host="0.0.0.0", auth={"mode": "none"})
    async with running_app(config, wait_for_upstreams=False) as proxy:  # bound to every address, reached via 127.0.0.1
        refused = await admin(proxy.port, "GET", "/services")
        assert refused.status_code == 403
        assert "admin_token" in refused.json()["error"]["message"]


async def test_on_loopback_the_admin_api_needs_no_token_but_checks_host_and_origin(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        assert (await admin(proxy.port, "GET", "/services")).status_code == 200
        assert (await admin(proxy.port, "GET", "/services", Host="attacker.example")).status_code == 421
        forged = await admin(proxy.port, "POST", "/sessions/x/extend", {"seconds": 1}, Origin="http://attacker.example")
        assert forged.status_code == 403


async def test_adding_a_command_service_through_the_api_is_refused_unless_the_config_allows_it(tmp_path: Path) -> None:
    entry = {"name": "spawned", **fixture_server("spawned")}
    closed = write_config(tmp_path, {}, name="closed.yaml")
    async with running_app(closed) as proxy:
        refused = await admin(proxy.port, "POST", "/services", entry)
        assert refused.status_code == 400
        assert refused.json()["error"]["type"] == "ConfigError"
        assert "allow_stdio_services_via_api" in refused.json()["error"]["message"]
        assert (await admin(proxy.port, "GET", "/services")).json() == []
        assert proxy.upstreams.started == []  # nothing was spawned

    opened = write_config(tmp_path, {}, name="opened.yaml", allow_stdio_services_via_api=True)
    async with running_app(opened) as proxy:
        added = await admin(proxy.port, "POST", "/services", entry)
        assert added.status_code == 200, added.text
        ready = await admin(proxy.port, "POST", "/services/spawned/wait?timeout=60")
        assert ready.json()["state"] == "ready"


async def test_replacing_a_url_service_with_a_command_through_the_api_is_refused_like_adding_one(
    tmp_path: Path,
) -> None:
    closed = write_config(tmp_path, {})
    async with running_app(closed) as proxy:
        added = await admin(proxy.port, "POST", "/services", {"name": "remote", "url": "http://127.0.0.1:9/mcp"})
        assert added.status_code == 200, added.text
        refused = await admin(proxy.port, "PUT", "/services/remote", fixture_server("spawned"))
        assert refused.status_code == 400
        assert "allow_stdio_services_via_api" in refused.json()["error"]["message"]
        assert proxy.upstreams.started == []  # nothing was spawned
        moved = await admin(proxy.port, "PUT", "/services/remote", {"url": "http://127.0.0.1:10/mcp"})
        assert moved.status_code == 200, moved.text  # another URL is the legitimate use


async def test_a_service_added_at_run_time_survives_a_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path, {})
    async with serving_fixture_over_http("remote") as upstream_url:
        async with running_app(config) as proxy:
            added = await admin(proxy.port, "POST", "/services", {"name": "remote", "url": upstream_url})
            assert added.status_code == 200, added.text
        saved = json.loads((tmp_path / "proxy.runtime-services.json").read_text())
        assert saved["store"] == {"remote": {"url": upstream_url, "added_through": "api"}}

        async with running_app(config) as proxy:
            services = (await admin(proxy.port, "GET", "/services")).json()
            assert [(s["name"], s["state"]) for s in services] == [("remote", "ready")]
            async with connect(proxy.url) as client:
                assert structured(await client.call_tool("remote_echo", {"text": "still here"})) == "still here"
            removed = await admin(proxy.port, "DELETE", "/services/remote")
            assert removed.status_code == 200
        assert json.loads((tmp_path / "proxy.runtime-services.json").read_text())["store"] == {}


async def test_an_interrupted_save_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    saved = tmp_path / "proxy.runtime-services.json"
    previous = '{"store": {"kept": {"url": "http://127.0.0.1:1/mcp"}}, "agents": {}}\n'
    saved.write_text(previous)
    writer = await anyio.open_process(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from mcpstore_proxy.persistence import write_atomically; "
            "write_atomically(Path(sys.argv[1]), 'x' * 400_000_000)",
            str(saved),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def writing() -> bool:
            return any(part.stat().st_size > 1_000_000 for part in tmp_path.glob(f".{saved.name}.*.tmp"))

        await wait_until(writing, timeout=60, what="the save to be under way")
        writer.send_signal(signal.SIGKILL)
    finally:
        with anyio.fail_after(30):
            await writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert saved.read_text() == previous
    assert json.loads(saved.read_text())["store"]["kept"]["url"] == "http://127.0.0.1:1/mcp"
