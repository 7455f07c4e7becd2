"""The headers the HTTP layers read, found in one pass and kept with the request's scope: read as the SDK reads
them (the first of a repeated header), and found again, never stale, once a layer replaces the headers."""

from __future__ import annotations

import random
from typing import Any

import pytest
from starlette.datastructures import Headers

from mcpstore_proxy.lane_modern import routing_of
from mcpstore_proxy.request_headers import first_value, request_headers

_SENT = [
    (b"host", b"127.0.0.1:8000"),
    (b"accept", b"application/json, text/event-stream"),
    (b"authorization", b"Bearer first"),
    (b"authorization", b"Bearer second"),
    (b"x-mcpstore-agent", b"team_1"),
    (b"mcp-session-id", b"abc"),
    (b"mcp-protocol-version", b"2025-11-25"),
    (b"content-type", b"application/json"),
    (b"content-length", b"120"),
    (b"accept", b"*/*"),
]


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}


def test_each_header_reads_as_the_sdk_reads_it_the_first_one_sent() -> None:
    found = request_headers(_scope(_SENT))
    sdk = Headers(raw=_SENT)
    assert found.authorization == sdk["authorization"].encode() == b"Bearer first"
    assert found.agent == b"team_1"
    assert found.session_id == b"abc"
    assert found.protocol_version == b"2025-11-25"
    assert found.content_length == b"120"
    assert found.last_event_id is None
    assert not found.repeats
    assert not found.is_padded


def test_the_headers_the_transport_checks_judge_are_kept_as_sent_repeats_and_order_included() -> None:
    assert request_headers(_scope(_SENT)).checked == [
        (b"host", b"127.0.0.1:8000"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"accept", b"*/*"),
    ]


def test_a_header_not_sent_is_none() -> None:
    found = request_headers(_scope([(b"host", b"127.0.0.1")]))
    assert (found.authorization, found.agent, found.session_id, found.protocol_version, found.content_length) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert found.checked == [(b"host", b"127.0.0.1")]


def test_a_repeated_session_id_protocol_version_method_or_name_is_noted_and_other_repeats_are_not() -> None:
    assert request_headers(_scope([*_SENT, (b"mcp-session-id", b"other")])).repeats
    assert request_headers(_scope([*_SENT, (b"mcp-protocol-version", b"2025-06-18")])).repeats
    assert request_headers(_scope([*_SENT, (b"mcp-method", b"tools/call"), (b"mcp-method", b"tools/list")])).repeats
    assert request_headers(_scope([*_SENT, (b"mcp-name", b"echo"), (b"mcp-name", b"echo")])).repeats
    assert not request_headers(_scope([*_SENT, (b"authorization", b"Bearer third")])).repeats


def _modern(*extra: tuple[bytes, bytes]) -> dict[str, Any]:
    sent = [
        (b"host", b"127.0.0.1:8000"),
        (b"mcp-protocol-version", b"2026-07-28"),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", b"echo"),
        (b"content-type", b"application/json"),
        (b"content-length", b"120"),
    ]
    return _scope([*sent, *extra])


def test_a_2026_requests_routing_headers_come_from_the_one_pass_with_the_checked_ones() -> None:
    found = routing_of(_modern(), limit=1000)
    assert found is not None
    assert found.headers == {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    assert found.checked == [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]


@pytest.mark.parametrize(
    "scope",
    [
        _modern((b"mcp-name", b"other")),  # a routing header repeated: the SDK refuses it
        _modern((b"mcp-param-region", b"eu")),  # the SDK checks it against the tool's schema
        _modern((b"mcp-session-id", b"abc")),
        _modern((b"last-event-id", b"1")),
        _scope([(b"mcp-protocol-version", b"2025-11-25"), (b"mcp-method", b"tools/call")]),  # the handshake era
        _scope([(b"mcp-method", b"tools/call")]),  # no version
    ],
    ids=["repeated-name", "param-header", "session-id", "resumption", "handshake-era", "no-version"],
)
def test_a_2026_request_its_headers_alone_leave_to_the_sdk_gets_no_routing(scope: dict[str, Any]) -> None:
    assert routing_of(scope, limit=1000) is None


def test_a_2026_request_declaring_a_body_past_the_limit_gets_no_routing_and_one_within_it_does() -> None:
    assert routing_of(_modern(), limit=119) is None
    assert routing_of(_modern(), limit=120) is not None


def test_a_resumption_is_noted() -> None:
    assert request_headers(_scope([*_SENT, (b"last-event-id", b"7")])).last_event_id == b"7"


def test_whitespace_around_any_value_is_noted_wherever_it_is() -> None:
    for padded in (b"echo ", b"echo\t", b" echo", b"\techo"):
        assert request_headers(_scope([*_SENT, (b"mcp-name", padded)])).is_padded, padded
    assert not request_headers(_scope([*_SENT, (b"mcp-name", b"echo"), (b"x-empty", b"")])).is_padded


def test_whitespace_is_judged_value_by_value_whatever_the_values_hold() -> None:
    # Values an HTTP parser never lets through (line breaks), empty ones and a single header: the same verdict as
    # stripping each value in turn.
    rng = random.Random(11)
    pieces = [b"", b" ", b"\t", b"\n", b"a", b"b c", b"\n ", b" \n"]
    for _ in range(2000):
        sent = [
            (b"x-%d" % index, b"".join(rng.choice(pieces) for _ in range(rng.randrange(4))))
            for index in range(rng.randrange(4))
        ]
        expected = any(value.strip(b" \t") != value for _, value in sent)
        assert request_headers(_scope(sent)).is_padded is expected, sent


def test_the_headers_are_found_once_per_request() -> None:
    scope = _scope(list(_SENT))
    assert request_headers(scope) is request_headers(scope)


def test_a_layer_that_replaces_the_headers_makes_the_next_reader_find_them_again_not_a_stale_copy() -> None:
    scope = _scope(list(_SENT))
    before = request_headers(scope)
    replaced = {**scope, "headers": [(name, value) for name, value in _SENT if name != b"mcp-session-id"]}
    after = request_headers(replaced)
    assert before.session_id == b"abc"
    assert after.session_id is None
    assert request_headers(scope) is before  # the original request's own headers are still what they were


def test_the_session_header_is_found_with_the_rest_and_any_other_header_by_a_pass_of_its_own() -> None:
    sent = [*_SENT, (b"x-mcpstore-session", b"work"), (b"x-session", b"mine"), (b"x-mcpstore-session", b"other")]
    scope = _scope(sent)
    assert request_headers(scope).session_key == b"work"
    assert first_value(scope, b"x-mcpstore-session") == b"work"  # the default `session_header`
    assert first_value(scope, b"x-session") == b"mine"  # a `session_header` of another name
    assert first_value(scope, b"x-absent") is None


def test_every_header_the_pass_keeps_is_what_a_pass_of_its_own_would_find() -> None:
    names = [b"authorization", b"x-mcpstore-agent", b"mcp-session-id", b"mcp-protocol-version", b"content-length"]
    sent = [*_SENT, (b"last-event-id", b"7"), (b"x-mcpstore-session", b"work"), (b"x-mcpstore-existing-session", b"1")]
    scope = _scope(sent)
    assert request_headers(scope).existing_session == b"1"
    for name in [*names, b"last-event-id", b"x-mcpstore-session", b"x-mcpstore-existing-session"]:
        assert first_value(scope, name) == Headers(raw=sent)[name.decode()].encode(), name


def test_a_body_is_declared_past_a_limit_only_by_a_content_length_of_digits_beyond_it() -> None:
    def declared(value: bytes | None) -> bool:
        sent = [(b"host", b"h")] if value is None else [(b"host", b"h"), (b"content-length", value)]
        return request_headers(_scope(sent)).declares_more_than(100)

    assert declared(b"101")
    assert not declared(b"100")
    assert not declared(None)
    assert not declared(b"-5")  # not a length: the transport judges it as it reads
    assert not declared(b"1e9")
