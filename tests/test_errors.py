"""The one error hierarchy: each class's place and wire facts (JSON-RPC code, HTTP status), its single
translation to an MCP error, the statuses the admin API and the HTTP front door answer with, and the
helpers that make a one-line message of any exception."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest
from mcp import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST

from mcpstore_proxy import errors
from mcpstore_proxy.errors import (
    SESSION_REFUSED,
    SHUTTING_DOWN,
    TOOL_CHANGED,
    UPSTREAM_FAILED,
    AccessError,
    AmbiguousToolError,
    AuthenticationError,
    ConfigError,
    ConnectionLimitError,
    InvalidSessionKeyError,
    NameCollisionError,
    PermissionDeniedError,
    ProxyError,
    RequestTooLargeError,
    SessionClosedError,
    SessionError,
    SessionLimitError,
    ShuttingDownError,
    ToolChangedError,
    ToolError,
    UnknownPromptError,
    UnknownResourceError,
    UnknownServiceError,
    UnknownToolError,
    UpstreamClosedError,
    UpstreamError,
    UpstreamStartError,
    UpstreamStoppedError,
    UpstreamTimeoutError,
    first_line,
    innermost,
    to_mcp_error,
)
from tests.inprocess import running_app
from tests.support import admin, connect, fixture_server, write_config

pytestmark = pytest.mark.anyio

WIRE_FACTS: Final[dict[type[ProxyError], tuple[type[Exception], int, int]]] = {
    # class: (parent, JSON-RPC code, HTTP status)
    ProxyError: (Exception, INTERNAL_ERROR, 500),
    ConfigError: (ProxyError, INVALID_PARAMS, 400),
    ToolError: (ProxyError, INTERNAL_ERROR, 502),
    NameCollisionError: (ConfigError, INVALID_PARAMS, 400),
    UnknownToolError: (ProxyError, INVALID_PARAMS, 404),
    UnknownPromptError: (ProxyError, INVALID_PARAMS, 404),
    UnknownResourceError: (ProxyError, INVALID_PARAMS, 404),
    UnknownServiceError: (ProxyError, INVALID_PARAMS, 404),
    AmbiguousToolError: (ProxyError, INVALID_PARAMS, 400),
    UpstreamError: (ProxyError, UPSTREAM_FAILED, 502),
    UpstreamStartError: (UpstreamError, UPSTREAM_FAILED, 502),
    UpstreamClosedError: (UpstreamError, UPSTREAM_FAILED, 502),
    UpstreamStoppedError: (UpstreamError, UPSTREAM_FAILED, 502),
    UpstreamTimeoutError: (UpstreamError, UPSTREAM_FAILED, 504),
    SessionError: (ProxyError, SESSION_REFUSED, 409),
    InvalidSessionKeyError: (SessionError, INVALID_PARAMS, 400),
    SessionLimitError: (SessionError, SESSION_REFUSED, 429),
    ConnectionLimitError: (SessionLimitError, SESSION_REFUSED, 503),
    SessionClosedError: (SessionError, SESSION_REFUSED, 404),
    AccessError: (ProxyError, INVALID_REQUEST, 403),
    AuthenticationError: (AccessError, INVALID_REQUEST, 401),
    PermissionDeniedError: (AccessError, INVALID_REQUEST, 403),
    ToolChangedError: (ProxyError, TOOL_CHANGED, 409),
    RequestTooLargeError: (ProxyError, INVALID_REQUEST, 413),
    ShuttingDownError: (ProxyError, SHUTTING_DOWN, 503),
}


@pytest.mark.parametrize("kind", WIRE_FACTS, ids=lambda kind: kind.__name__)
def test_each_error_class_carries_its_place_its_json_rpc_code_and_its_http_status(kind: type[ProxyError]) -> None:
    parent, code, http_status = WIRE_FACTS[kind]
    assert kind.__bases__ == (parent,)
    assert (kind.code, kind.http_status) == (code, http_status)


def test_the_table_covers_every_error_class_of_the_module() -> None:
    defined = {value for value in vars(errors).values() if inspect.isclass(value) and issubclass(value, ProxyError)}
    assert defined == set(WIRE_FACTS)


def test_our_codes_sit_in_the_implementation_defined_server_error_range() -> None:
    for code in (UPSTREAM_FAILED, SESSION_REFUSED, SHUTTING_DOWN, TOOL_CHANGED):
        assert -32099 <= code <= -32000
    assert len({UPSTREAM_FAILED, SESSION_REFUSED, SHUTTING_DOWN, TOOL_CHANGED}) == 4


def test_an_upstream_error_names_its_upstream_and_says_whether_a_retry_is_safe() -> None:
    closed = UpstreamClosedError("browser", "it crashed")
    assert (closed.upstream, closed.message, str(closed), closed.is_retryable) == (
        "browser",
        "it crashed",
        "it crashed",
        False,
    )
    assert UpstreamClosedError("browser", "404", is_retryable=True).is_retryable
    assert not UpstreamStoppedError("browser", "closed", was_sent=False).was_sent


def test_to_mcp_error_puts_the_type_and_the_upstream_in_data() -> None:
    wire = to_mcp_error(UpstreamTimeoutError("browser", "upstream 'browser' did not answer"))
    assert isinstance(wire, MCPError)
    assert (wire.code, wire.message) == (UPSTREAM_FAILED, "upstream 'browser' did not answer")
    assert wire.error.data == {"type": "UpstreamTimeoutError", "upstream": "browser"}


def test_to_mcp_error_of_an_error_without_an_upstream_gives_only_its_type() -> None:
    wire = to_mcp_error(SessionClosedError("session 'x' is closed"))
    assert (wire.code, wire.message) == (SESSION_REFUSED, "session 'x' is closed")
    assert wire.error.data == {"type": "SessionClosedError"}


def test_innermost_finds_the_first_real_exception_inside_nested_groups() -> None:
    cause = KeyError("k")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [cause]), ValueError("second")])
    assert innermost(nested) is cause
    plain = ValueError("plain")
    assert innermost(plain) is plain
    assert innermost(None) is None


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ValueError("first line\nsecond line"), "ValueError: first line"),
        (ValueError("  \n  padded  \n"), "ValueError: padded"),
        (ValueError(), "ValueError"),
        (ExceptionGroup("group", [OSError("deep down")]), "OSError: deep down"),
    ],
)
def test_first_line_gives_the_type_and_first_line_of_the_innermost_error(error: BaseException, line: str) -> None:
    assert first_line(error) == line


# At the wire.


def _error_of(response: httpx2.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body["error"]


async def test_the_admin_api_answers_each_error_with_its_class_status(tmp_path: Path) -> None:
    servers = {
        "state": fixture_server("state"),
        "other": fixture_server("other"),
        "broken": fixture_server("broken", "--fail-start", "no luck"),
    }
    config = write_config(tmp_path, servers)
    requests: list[tuple[str, str, Any, type[ProxyError]]] = [
        ("GET", "/services/nothing", None, UnknownServiceError),
        ("POST", "/services", {"name": "bad", "url": "http://x", "colour": "red"}, ConfigError),
        ("DELETE", "/services/state", None, ConfigError),
        ("GET", "/tools/resolve?name=echo", None, AmbiguousToolError),
        ("GET", "/tools/resolve?name=nothing", None, UnknownToolError),
        ("GET", "/sessions/never", None, SessionClosedError),
        ("POST", "/services/broken/wait?timeout=5", None, UpstreamStartError),
        ("GET", "/services?agent=no%20spaces", None, InvalidSessionKeyError),
    ]
    async with running_app(config) as proxy:
        for method, path, body, kind in requests:
            response = await admin(proxy.port, method, path, body)
            error = _error_of(response)
            assert (response.status_code, error["type"], error["code"]) == (
                kind.http_status,
                kind.__name__,
                kind.code,
            ), f"{method} {path}: {response.text}"
        malformed = await admin(proxy.port, "POST", "/sessions/x/bind", ["not", "an", "object"])
        assert malformed.status_code == 400
        assert _error_of(malformed) == {
            "type": "ConfigError",
            "message": "the body must be a JSON object",
            "code": INVALID_PARAMS,
        }


async def test_mcp_clients_get_our_errors_with_their_code_and_type_and_a_refused_newcomer_gets_503(
    tmp_path: Path,
) -> None:
    servers = {"state": fixture_server("state"), "slow": fixture_server("slow", call_timeout_seconds=0.2)}
    config = write_config(tmp_path, servers, max_downstream_sessions=1, max_named_sessions_per_client=1)
    async with running_app(config) as proxy, connect(proxy.url) as client:
        with pytest.raises(MCPError) as timed_out:
            await client.call_tool("slow_sleep", {"seconds": 30})
        assert timed_out.value.code == UPSTREAM_FAILED
        assert timed_out.value.error.data == {"type": "UpstreamTimeoutError", "upstream": "slow"}
        assert "call_timeout_seconds" in timed_out.value.message

        await client.call_tool("state_echo", {"text": "1", "session_id": "first"})
        with pytest.raises(MCPError) as over_the_limit:
            await client.call_tool("state_echo", {"text": "2", "session_id": "second"})
        assert over_the_limit.value.code == SESSION_REFUSED
        assert over_the_limit.value.error.data == {"type": "SessionLimitError"}

        with pytest.raises(MCPError) as unknown:
            await client.call_tool("nothing", {})
        assert unknown.value.code == INVALID_PARAMS

        async with httpx2.AsyncClient() as http:
            refused = await http.post(
                proxy.url,
                json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                headers={"Accept": "application/json, text/event-stream"},
            )
        assert refused.status_code == ConnectionLimitError.http_status == 503
        error = _error_of(refused)
        assert (error["code"], error["data"]) == (SESSION_REFUSED, {"type": "ConnectionLimitError"})
        assert "max_downstream_sessions" in error["message"]
