"""What the proxy exposes, and to whom: secure defaults for the bind address, an admin API that honours its token
and checks every body, services added through it kept to the URLs the config allows (and to "could not connect"
when they fail), upstreams' stderr kept for operators, and saved services checked against today's rules.

Each test is one of the problems found when the proxy was tried as an attacker would, and shows the legitimate
use still working. In process (`running_app`, upstreams in memory), but for the CLI's own checks.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Generator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcpstore_proxy import cli
from tests.inprocess import running_app
from tests.support import admin, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

_OPS = {"Authorization": "Bearer ops-token-0123456789"}
_ALICE = {"Authorization": "Bearer alice-token-0123456789"}
_TOKENS: dict[str, Any] = {
    "tokens": [
        {"token": "ops-token-0123456789", "principal": "ops", "admin": True},
        {"token": "alice-token-0123456789", "principal": "alice", "agents": ["team_1"]},
    ]
}


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.2"])
def test_serving_beyond_this_machine_without_auth_is_refused_naming_the_fix(
    tmp_path: Path, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, host=host)
    assert cli.main(["serve", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"serving on {host} reaches beyond this machine and needs 'auth'" in error
    assert "auth: {mode: none}" in error


async def test_serving_without_authentication_on_purpose_says_so_at_every_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, host="0.0.0.0", auth={"mode": "none"})
    async with running_app(config, wait_for_upstreams=False) as proxy:
        await wait_until(lambda: "WITHOUT authentication" in proxy.log, what="the warning")


async def test_on_loopback_the_admin_token_is_honoured_when_set(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, admin_token="the-admin-token-0123")
    async with running_app(config) as proxy:
        assert (await admin(proxy.port, "GET", "/services")).status_code == 401
        ok = await admin(proxy.port, "GET", "/services", Authorization="Bearer the-admin-token-0123")
        assert ok.status_code == 200


async def test_admin_bodies_over_a_mebibyte_are_refused_before_they_are_read_whole(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, httpx2.AsyncClient() as http:
        url = f"http://127.0.0.1:{proxy.port}/admin/sessions/x/extend"
        huge = b'{"seconds": 1, "padding": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        declared = await http.post(url, content=huge, headers={"Content-Type": "application/json"})
        assert declared.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * (512 * 1024)

        streamed = await http.post(url, content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert "1048576" in streamed.json()["error"]["message"]
        assert (await admin(proxy.port, "PUT", "/sessions/x")).status_code == 200
        assert (await admin(proxy.port, "POST", "/sessions/x/extend", {"seconds": 60})).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/sessions/x/extend", '{"seconds": NaN}', "seconds"),
        ("/sessions/x/extend", '{"seconds": Infinity}', "seconds"),
        ("/sessions/x/extend", '{"seconds": -5}', "seconds"),
        ("/sessions/x/extend", '{"seconds": "soon"}', "seconds"),
        ("/sessions/x/bind", '{"service": 5}', "service"),
        ("/sessions/x/bind", '{"services": "state"}', "service"),
        ("/services/state/wait?timeout=nan", "{}", "timeout"),
    ],
)
async def test_every_malformed_field_is_a_400_naming_the_field(
    tmp_path: Path, path: str, body: str, field: str
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, httpx2.AsyncClient() as http:
        await admin(proxy.port, "PUT", "/sessions/x")
        refused = await http.post(
            f"http://127.0.0.1:{proxy.port}/admin{path}", content=body, headers={"Content-Type": "application/json"}
        )
        assert refused.status_code == 400, refused.text
        assert field in refused.json()["error"]["message"]
        info = (await admin(proxy.port, "GET", "/sessions/x")).json()
        assert info["expires_in_seconds"] < 10 * 3600  # nothing was extended to forever


async def test_resolving_a_tool_never_opens_a_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy:
        resolved = await admin(proxy.port, "GET", "/tools/resolve?name=echo&session=ghost&open=1")
        assert resolved.status_code == 404
        assert (await admin(proxy.port, "GET", "/sessions/ghost")).status_code == 404
        assert (await admin(proxy.port, "PUT", "/sessions/ghost")).status_code == 200
        assert (await admin(proxy.port, "GET", "/tools/resolve?name=echo&session=ghost")).json()["name"] == "state_echo"


async def test_an_upstreams_stderr_reaches_operators_only(tmp_path: Path) -> None:
    servers = {"state": fixture_server("state"), "broken": fixture_server("broken", "--fail-start", "token=S3CRET")}
    config = write_config(tmp_path, servers, auth=_TOKENS)
    async with running_app(config) as proxy:
        seen_by_alice = (await admin(proxy.port, "GET", "/services/broken", **_ALICE)).json()
        assert seen_by_alice["state"] == "failed"
        assert "S3CRET" not in json.dumps(seen_by_alice)
        seen_by_ops = (await admin(proxy.port, "GET", "/status", **_OPS)).json()
        assert "token=S3CRET" in seen_by_ops["upstreams"]["broken"]["detail"]
        assert "token=S3CRET" in proxy.log  # the operator's log keeps it


@contextmanager
def answering_http_but_not_mcp() -> Generator[int]:
    """A port where an HTTP server answers every request with 404; yields the port."""

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the http.server protocol's name
            self.send_error(404)

        do_GET = do_POST  # noqa: N815  # the http.server protocol's name

        def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, name="404 server", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_a_url_service_added_through_the_api_must_be_listed_and_says_only_that_it_could_not_connect(
    tmp_path: Path,
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = int(closed.getsockname()[1])  # bound, never listening: connections are refused
        config = write_config(
            tmp_path, {"state": fixture_server("state")}, auth=_TOKENS, api_service_urls=["http://127.0.0.1:*/mcp"]
        )
        async with running_app(config) as proxy:
            unlisted = await admin(
                proxy.port, "POST", "/services?agent=team_1", {"name": "x", "url": "http://10.0.0.1/mcp"}, **_ALICE
            )
            assert unlisted.status_code == 400
            assert "api_service_urls" in unlisted.json()["error"]["message"]
            with answering_http_but_not_mcp() as silent_port:
                messages: list[str] = []
                for name, port in (("refused", closed_port), ("silent", silent_port)):
                    entry = {"name": name, "url": f"http://127.0.0.1:{port}/mcp"}
                    added = await admin(proxy.port, "POST", "/services?agent=team_1", entry, **_ALICE)
                    assert added.status_code == 200, added.text
                    waited = await admin(proxy.port, "POST", f"/services/{name}/wait?agent=team_1&timeout=5", **_ALICE)
                    assert waited.status_code in (502, 504), waited.text
                    messages.append(waited.json()["error"]["message"].replace(name, "NAME"))
                    assert "detail" not in waited.json()["error"]
            assert messages[0] == messages[1] == "upstream 'NAME' could not connect (check its url)"


async def test_a_saved_command_service_added_through_the_api_is_not_run_again_once_the_config_forbids_it(
    tmp_path: Path,
) -> None:
    saved = {
        "store": {
            "spawned": {**fixture_server("spawned"), "added_through": "api"},
            "trusted": {**fixture_server("trusted"), "added_through": "sdk"},
        },
        "agents": {},
    }
    (tmp_path / "proxy.runtime-services.json").write_text(json.dumps(saved))
    config = write_config(tmp_path, {"state": fixture_server("state")})  # allow_stdio_services_via_api is off
    async with running_app(config) as proxy:
        names = [service["name"] for service in (await admin(proxy.port, "GET", "/services")).json()]
        assert names == ["state", "trusted"]
        assert "skipped the saved service 'spawned'" in proxy.log
        assert "allow_stdio_services_via_api" in proxy.log
