"""`Acceptance`: which POSTs the fast lane may take, by the SDK's own media-type, Host and Origin checks, each
verdict remembered for exactly the header values it was reached on."""

from __future__ import annotations

import pytest
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.types import Scope

from mcpstore_proxy.lane_wire import Acceptance

pytestmark = pytest.mark.anyio

_GOOD: dict[str, str] = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "host": "127.0.0.1:8765",
    "origin": "http://127.0.0.1:8765",
}


def _post(*headers: tuple[str, str]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/mcp", "headers": [(n.encode(), v.encode()) for n, v in headers]}


def _with(**changed: str) -> list[tuple[str, str]]:
    return list({**_GOOD, **{name.replace("_", "-"): value for name, value in changed.items()}}.items())


@pytest.fixture
def acceptance() -> Acceptance:
    settings = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*"],
        allowed_origins=["http://127.0.0.1:*"],
    )
    return Acceptance(TransportSecurityMiddleware(settings))


async def test_a_request_with_the_media_types_host_and_origin_the_sdk_accepts_is_the_lanes(
    acceptance: Acceptance,
) -> None:
    assert await acceptance.verdict(_post(*_with()))
    assert await acceptance.verdict(_post(*_with()))  # and again, from memory


async def test_after_an_accepted_request_one_from_another_origin_or_host_is_judged_afresh_and_refused(
    acceptance: Acceptance,
) -> None:
    assert await acceptance.verdict(_post(*_with()))
    assert not await acceptance.verdict(_post(*_with(origin="http://attacker.example")))
    assert not await acceptance.verdict(_post(*_with(host="attacker.example")))
    assert await acceptance.verdict(_post(*_with()))


async def test_a_repeated_origin_header_is_remembered_apart_from_the_same_origin_sent_alone(
    acceptance: Acceptance,
) -> None:
    # The SDK reads the first Origin, here an empty one (as good as none): the pair passes, and must not vouch
    # for the second one sent alone.
    headers = [header for header in _with() if header[0] != "origin"]
    assert await acceptance.verdict(_post(*headers, ("origin", ""), ("origin", "http://attacker.example")))
    assert not await acceptance.verdict(_post(*headers, ("origin", "http://attacker.example")))


async def test_a_request_that_does_not_accept_both_json_and_event_streams_or_is_not_json_is_left_to_the_sdk(
    acceptance: Acceptance,
) -> None:
    assert not await acceptance.verdict(_post(*_with(accept="application/json")))
    assert not await acceptance.verdict(_post(*_with(accept="text/event-stream")))
    assert not await acceptance.verdict(_post(*_with(content_type="text/plain")))
    assert await acceptance.verdict(_post(*_with(accept="*/*")))


async def test_a_legacy_sse_post_is_judged_by_that_transports_checks_content_type_host_and_origin_not_accept() -> None:
    settings = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*"],
        allowed_origins=["http://127.0.0.1:*"],
    )
    legacy = Acceptance(TransportSecurityMiddleware(settings), legacy_sse=True)
    assert await legacy.verdict(_post(*_with(accept="*/*")))  # what an old client sends: fine for this transport
    assert await legacy.verdict(_post(*[header for header in _with() if header[0] != "accept"]))
    assert not await legacy.verdict(_post(*_with(content_type="text/plain")))
    assert not await legacy.verdict(_post(*_with(origin="http://attacker.example")))
    assert not await legacy.verdict(_post(*_with(host="attacker.example")))
