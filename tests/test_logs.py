"""Logging: session ids never appear in clear (the SDK's and uvicorn's lines show the same short hash our own
lines show), the handler `configure_logging` installs (text, or one JSON object per line), and warnings that a
flood cannot turn into a flood."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError

from mcpstore_proxy.errors import SESSION_REFUSED
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.logs import (
    RedactSessionIds,
    StderrHandler,
    ThrottledWarning,
    configure_logging,
    fingerprint,
    log_fields,
)
from tests.clock import ManualClock
from tests.support import fixture_server, running_proxy, streamable_http_client, wait_until, write_config

pytestmark = pytest.mark.anyio


class ListHandler(logging.Handler):
    """Keeps every record's final message, as a handler with the redaction filter would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def redacted() -> Iterator[ListHandler]:
    """A handler with the redaction filter on the loggers the tests write to."""
    handler = ListHandler()
    handler.addFilter(RedactSessionIds())
    loggers = [logging.getLogger(name) for name in ("mcp.server.streamable_http", "uvicorn.error", "mcpstore_proxy.x")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)


@pytest.fixture
def quiet_logger() -> Iterator[tuple[logging.Logger, ListHandler]]:
    """A logger of its own that writes only to a list."""
    logger = logging.getLogger(f"tests.throttled.{uuid.uuid4().hex[:8]}")
    handler = ListHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


# Session ids.


@pytest.mark.parametrize(
    "session_id",
    ["e82488a213ac425f80a3a955914d5f08", "9d25219b-3238-4817-ae5f-1a171fce3a05", "57C96016178C4F7B9D5C54D860A475C4"],
    ids=["hex", "dashed", "upper-case"],
)
def test_a_session_id_in_an_sdk_line_becomes_the_fingerprint_our_own_lines_show(
    redacted: ListHandler, session_id: str
) -> None:
    logging.getLogger("mcp.server.streamable_http").info("Terminating session: %s", session_id)
    expected = f"Terminating session: #{SessionKey.connection(session_id).fingerprint}"
    assert redacted.messages == [expected]
    assert session_id not in redacted.messages[0]


def test_every_session_id_in_a_uvicorn_line_is_redacted_and_the_rest_kept(redacted: ListHandler) -> None:
    first, second = uuid.uuid4().hex, str(uuid.uuid4())
    logging.getLogger("uvicorn.error").info("moved %s to %s (status %d)", first, second, 200)
    assert redacted.messages == [f"moved #{fingerprint(first)} to #{fingerprint(second)} (status 200)"]


def test_lines_of_other_loggers_and_lines_without_ids_are_left_alone(redacted: ListHandler) -> None:
    session_id = uuid.uuid4().hex
    # "mcpstore_proxy" starts with "mcp" but is not the SDK: its lines name sessions by key already.
    logging.getLogger("mcpstore_proxy.x").info("request id %s", session_id)
    logging.getLogger("mcp.server.streamable_http").info("no id here, only %d digits", 1234567890)
    logging.getLogger("mcp.server.streamable_http").info("too short to be one: %s", "0123456789abcdef")
    assert redacted.messages == [
        f"request id {session_id}",
        "no id here, only 1234567890 digits",
        "too short to be one: 0123456789abcdef",
    ]


def test_a_fingerprint_is_short_and_stable_and_tells_ids_apart() -> None:
    session_id = uuid.uuid4().hex
    assert fingerprint(session_id) == fingerprint(session_id)
    assert len(fingerprint(session_id)) == 10
    assert fingerprint(session_id) != fingerprint(uuid.uuid4().hex)
    assert str(SessionKey.connection(session_id)) == f"connection session #{fingerprint(session_id)}"


# The handler.


@pytest.fixture
def root_restored() -> Iterator[None]:
    """configure_logging replaces the root handlers (pytest's own among them): put everything back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    httpx2_level = logging.getLogger("httpx2").level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("httpx2").setLevel(httpx2_level)


@pytest.mark.usefixtures("root_restored")
def test_configure_logging_writes_redacted_lines_to_stderr_at_the_given_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("WARNING")
    root = logging.getLogger()
    [handler] = root.handlers
    assert isinstance(handler, StderrHandler)
    assert root.level == logging.WARNING
    assert logging.getLogger("httpx2").level == logging.WARNING  # one line per upstream request is noise
    session_id = uuid.uuid4().hex
    logging.getLogger("mcp.server.streamable_http").warning("lost session %s", session_id)
    logging.getLogger("mcpstore_proxy.x").info("below the level")
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout may be the MCP channel
    [line] = captured.err.splitlines()
    assert line.endswith(f" WARNING mcp.server.streamable_http: lost session #{fingerprint(session_id)}")


@pytest.mark.usefixtures("root_restored")
def test_lines_go_to_stderr_as_it_is_when_they_are_written_never_to_a_stream_closed_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("WARNING")
    logging.getLogger("mcpstore_proxy.x").warning("to the first")
    first.close()  # as pytest closes a test's captured stderr once the test is over
    monkeypatch.setattr(sys, "stderr", second)
    monkeypatch.setattr(logging, "raiseExceptions", True)  # a failed write would print "--- Logging error ---"
    logging.getLogger("mcpstore_proxy.x").warning("to the second")
    [line] = second.getvalue().splitlines()
    assert line.endswith(" WARNING mcpstore_proxy.x: to the second")


@pytest.mark.usefixtures("root_restored")
def test_configure_logging_at_debug_keeps_the_http_client_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("httpx2").setLevel(logging.NOTSET)
    configure_logging("DEBUG")
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("httpx2").level == logging.NOTSET
    logging.getLogger("httpx2").debug("HTTP Request: GET /mcp")
    assert capsys.readouterr().err.splitlines()[-1].endswith(" DEBUG httpx2: HTTP Request: GET /mcp")


@pytest.mark.usefixtures("root_restored")
def test_json_lines_carry_time_level_logger_event_and_the_fields_the_call_site_knows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    key = SessionKey.connection(uuid.uuid4().hex, principal="alice")
    logging.getLogger("mcpstore_proxy.x").warning(
        "refused %s", key, extra=log_fields(upstream="state", key=key, duration_seconds=0.25)
    )
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry.pop("time").endswith("+00:00")  # ISO 8601, UTC
    assert entry == {
        "level": "WARNING",
        "logger": "mcpstore_proxy.x",
        "event": f"refused connection session #{key.fingerprint} for principal 'alice'",
        "upstream": "state",
        "principal": "alice",
        "session": f"#{key.fingerprint}",
        "duration_ms": 250.0,
    }
    assert key.name not in line


@pytest.mark.usefixtures("root_restored")
def test_a_json_line_redacts_sdk_session_ids_in_its_event_and_in_the_error_it_carries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    session_id = uuid.uuid4().hex
    try:
        raise KeyError(session_id)
    except KeyError:
        logging.getLogger("mcp.server.streamable_http").exception("no session %s", session_id)
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["event"] == f"no session #{fingerprint(session_id)}"
    assert entry["error"] == f"KeyError: '#{fingerprint(session_id)}'"
    assert session_id not in line


# The real process, logging JSON.

_JSON_KEYS = {"time", "level", "logger", "event"}


async def test_with_log_format_json_every_line_of_a_real_proxy_is_json_and_a_refusal_names_upstream_and_session(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, log_format="json", max_sessions_per_upstream=1)
    session_ids: list[str] = []

    async def note_session_id(response: httpx2.Response) -> None:
        if "mcp-session-id" in response.headers:
            session_ids.append(response.headers["mcp-session-id"])

    async with running_proxy(config) as proxy:
        async with (
            httpx2.AsyncClient(event_hooks={"response": [note_session_id]}) as http,
            Client(streamable_http_client(proxy.url, http_client=http), mode="legacy", cache=None) as first,
            Client(streamable_http_client(proxy.url, http_client=http), mode="legacy", cache=None) as second,
        ):
            await first.call_tool("state_remember", {"value": "one"})
            with pytest.raises(MCPError) as refused:
                await second.call_tool("state_remember", {"value": "two"})
            assert refused.value.code == SESSION_REFUSED
        await wait_until(lambda: "its cap of 1 sessions is reached" in proxy.log, what="the refusal's log line")
        log = proxy.log
    entries: list[dict[str, Any]] = []
    for line in log.splitlines():
        entry = json.loads(line)  # every line, uvicorn's and the SDK's too
        assert entry.keys() >= _JSON_KEYS, line
        assert dt.datetime.fromisoformat(entry["time"]).utcoffset() == dt.timedelta(0)
        entries.append(entry)
    [refusal] = [entry for entry in entries if "its cap of 1 sessions is reached" in entry["event"]]
    assert refusal["level"] == "WARNING"
    assert refusal["upstream"] == "state"
    assert refusal["principal"] == "anonymous"
    assert re.fullmatch(r"#[0-9a-f]{10}", refusal["session"])
    assert refusal["session"] in {f"#{fingerprint(session_id)}" for session_id in session_ids}
    assert any(entry["logger"].startswith("uvicorn") for entry in entries)
    assert len(set(session_ids)) == 2
    for session_id in set(session_ids):
        assert session_id not in log


# Throttled warnings.


def test_a_throttled_warning_logs_the_first_at_once_and_holds_back_the_rest(
    quiet_logger: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = quiet_logger
    warning = ThrottledWarning(logger, interval_seconds=3600)
    for index in range(5):
        warning.warn("refused request %d", index)
    assert handler.messages == ["refused request 0"]


async def test_after_the_interval_the_next_warning_counts_the_ones_held_back(
    quiet_logger: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = quiet_logger
    clock = ManualClock()
    warning = ThrottledWarning(logger, interval_seconds=10, now=clock.now)
    warning.warn("refused %s", "a")
    warning.warn("refused %s", "b")
    clock.advance(9.9)
    warning.warn("refused %s", "c")
    assert handler.messages == ["refused a"]
    clock.advance(0.1)
    warning.warn("refused %s", "d")
    warning.warn("refused %s", "e")  # held back again: the count starts afresh
    assert handler.messages == ["refused a", "refused d (and 2 more like it in the last 10 s)"]
