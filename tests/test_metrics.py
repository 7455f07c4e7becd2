"""Metrics at `/metrics`: the documented names and correct counts after real traffic, and who may read them.

In process (`running_app`): the real app on uvicorn, upstreams in memory; scraped over HTTP and parsed with
prometheus-client's own parser.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.types import INVALID_PARAMS
from prometheus_client.parser import text_string_to_metric_families

from mcpstore_proxy.errors import SESSION_REFUSED, SHUTTING_DOWN, UPSTREAM_FAILED
from tests.conversation import structured
from tests.inprocess import InProcessProxy, running_app
from tests.pinning import mutable
from tests.support import ACCEPT, INITIALIZE, admin, connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(proxy: InProcessProxy, token: str | None = None) -> Samples:
    """Every sample `/metrics` answers, by name and labels."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{proxy.port}/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly these labels (0 when there is none, as Prometheus would read it)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def calls(samples: Samples, tool: str, outcome: str, upstream: str = "state") -> float:
    return value(
        samples,
        "mcp_server_operation_duration_seconds_count",
        mcp_method_name="tools/call",
        gen_ai_tool_name=tool,
        upstream=upstream,
        outcome=outcome,
    )


async def test_metrics_after_real_traffic_count_calls_errors_sessions_spawns_refusals_and_resets(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", max_sessions=1)})
    async with running_app(config) as proxy, connect(proxy.url) as alice, connect(proxy.url) as bob:
        first = structured(await alice.call_tool("state_whoami", {}))
        for text in ("one", "two"):
            assert structured(await alice.call_tool("state_echo", {"text": text})) == text
        assert (await alice.call_tool("state_echo", {})).is_error  # the upstream rejects it: a tool error
        with pytest.raises(MCPError) as refused:
            await bob.call_tool("state_recall", {})  # the upstream's one session is alice's
        assert refused.value.code == SESSION_REFUSED
        with pytest.raises(MCPError) as unknown:
            await alice.call_tool("state_nonexistent", {})

        await proxy.kill_upstream(first)

        async def alices_session_is_gone() -> bool:
            return (
                value(await scrape(proxy), "mcpstore_upstream_sessions", upstream="state", agent="", state="ready") == 0
            )

        await wait_until(alices_session_is_gone, what="the proxy to see alice's upstream session end")
        assert structured(await alice.call_tool("state_whoami", {})) != first
        samples = await scrape(proxy)

    assert unknown.value.code == INVALID_PARAMS
    assert calls(samples, "state_whoami", "ok") == 2
    assert calls(samples, "state_echo", "ok") == 2
    assert calls(samples, "state_echo", "error") == 1
    assert calls(samples, "state_recall", "error") == 1
    assert calls(samples, "", "error", upstream="") == 1  # an unknown tool's name is no label value
    assert (
        value(
            samples,
            "mcp_server_operation_duration_seconds_count",
            mcp_method_name="initialize",
            gen_ai_tool_name="",
            upstream="",
            outcome="ok",
        )
        == 2
    )
    client_leg = "mcp_client_operation_duration_seconds_count"
    assert value(samples, client_leg, mcp_method_name="tools/call", upstream="state", outcome="ok") == 4
    assert value(samples, client_leg, mcp_method_name="tools/call", upstream="state", outcome="error") == 1

    # The catalog's session, alice's, and alice's fresh one after the kill; bob's was refused before it started.
    assert value(samples, "mcpstore_upstream_spawns_total", upstream="state") == 3
    assert value(samples, "mcpstore_upstream_spawn_duration_seconds_count", upstream="state") == 3
    assert value(samples, "mcpstore_refusals_total", limit="max_sessions_per_upstream") == 1
    assert value(samples, "mcpstore_session_resets_total", upstream="state") == 1
    assert value(samples, "mcpstore_upstream_sessions", upstream="state", agent="", state="ready") == 1
    assert value(samples, "mcpstore_upstream_state", upstream="state", agent="", state="ready") == 1
    assert value(samples, "mcpstore_upstream_state", upstream="state", agent="", state="failed") == 0
    assert value(samples, "mcpstore_downstream_sessions") == 2
    assert not any("principal" in dict(labels) for _, labels in samples)


async def test_an_upstream_that_fails_to_start_counts_failed_spawns(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"broken": fixture_server("broken", "--fail-start", "no key")})
    async with running_app(config) as proxy:
        samples = await scrape(proxy)
    assert value(samples, "mcpstore_upstream_spawn_failures_total", upstream="broken") >= 1
    assert value(samples, "mcpstore_upstream_spawns_total", upstream="broken") == 0
    assert value(samples, "mcpstore_upstream_state", upstream="broken", agent="", state="failed") == 1


async def test_a_call_past_its_timeout_counts_a_timeout_and_an_error_on_both_legs(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", call_timeout_seconds=0.2)})
    async with running_app(config) as proxy, connect(proxy.url) as client:
        with pytest.raises(MCPError) as timed_out:
            await client.call_tool("state_sleep", {"seconds": 30})
        assert timed_out.value.code == UPSTREAM_FAILED
        samples = await scrape(proxy)
    assert value(samples, "mcpstore_upstream_timeouts_total", upstream="state") == 1
    assert calls(samples, "state_sleep", "error") == 1
    assert (
        value(
            samples,
            "mcp_client_operation_duration_seconds_count",
            mcp_method_name="tools/call",
            upstream="state",
            outcome="error",
        )
        == 1
    )


async def test_a_warm_pool_shows_its_spares_and_their_target(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state", warm_sessions=2)})
    async with running_app(config) as proxy:

        async def spares_ready() -> bool:
            samples = await scrape(proxy)
            return value(samples, "mcpstore_warm_pool_sessions", upstream="state", agent="", state="ready") == 2

        await wait_until(spares_ready, what="two spares to be ready")
        samples = await scrape(proxy)
    assert value(samples, "mcpstore_warm_pool_target", upstream="state", agent="") == 2


async def test_a_tool_definition_that_changes_counts_a_pinning_event_withheld_under_enforce(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": mutable()}, tool_pinning="enforce")
    async with running_app(config) as proxy, connect(proxy.url) as client:
        await client.call_tool("state_mutate", {"kind": "description"})

        async def withheld() -> bool:
            samples = await scrape(proxy)
            return value(samples, "mcpstore_tool_pinning_events_total", upstream="state", action="withheld") == 1

        await wait_until(withheld, what="the changed echo to be withheld")


# Who may read them.


def auth_config(directory: Path, **settings: Any) -> tuple[Path, dict[str, str]]:
    tokens = {who: secrets.token_urlsafe(24) for who in ("alice", "admin", "metrics", "boss")}
    config = write_config(
        directory,
        {"state": fixture_server("state")},
        admin_token=tokens["admin"],
        metrics_token=tokens["metrics"],
        auth={
            "tokens": [
                {"token": tokens["alice"], "principal": "alice"},
                {"token": tokens["boss"], "principal": "boss", "admin": True},
            ]
        },
        **settings,
    )
    return config, tokens


async def get(proxy: InProcessProxy, path: str, token: str | None = None, **headers: str) -> httpx2.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        return await http.get(f"http://127.0.0.1:{proxy.port}{path}", headers=headers)


async def test_with_auth_metrics_are_for_admins_and_the_metrics_token_which_opens_nothing_else(tmp_path: Path) -> None:
    config, tokens = auth_config(tmp_path)
    async with running_app(config) as proxy:
        anonymous = await get(proxy, "/metrics")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer resource_metadata=")
        assert (await get(proxy, "/metrics", "not-a-token")).status_code == 401
        assert (await get(proxy, "/metrics", tokens["alice"])).status_code == 403
        for reader in ("admin", "boss", "metrics"):
            answer = await get(proxy, "/metrics", tokens[reader])
            assert answer.status_code == 200, reader
            assert "mcp_server_operation_duration_seconds" in answer.text
        assert (await get(proxy, "/admin/status", tokens["metrics"])).status_code == 401
        assert (await get(proxy, "/admin/status", tokens["admin"])).status_code == 200
        foreign = await get(proxy, "/metrics", tokens["metrics"], Host="attacker.example")
        assert foreign.status_code == 421
        # A web page the user visits cannot have the browser read it either (the token alone was enough above).
        cross_site = await get(proxy, "/metrics", tokens["metrics"], Origin="https://attacker.example")
        assert cross_site.status_code == 403


async def test_without_auth_an_admin_token_or_metrics_token_closes_metrics_on_loopback(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)
    config = write_config(tmp_path, {"state": fixture_server("state")}, metrics_token=token)
    async with running_app(config) as proxy:
        assert (await get(proxy, "/metrics")).status_code == 401
        assert (await get(proxy, "/metrics", "wrong-token")).status_code == 401
        assert (await get(proxy, "/metrics", token)).status_code == 200


async def test_metrics_per_principal_label_each_call_with_its_principal(tmp_path: Path) -> None:
    config, tokens = auth_config(tmp_path, metrics_per_principal=True)
    async with (
        running_app(config) as proxy,
        connect(proxy.url, headers={"Authorization": f"Bearer {tokens['alice']}"}) as alice,
    ):
        await alice.call_tool("state_echo", {"text": "hi"})
        samples = await scrape(proxy, tokens["metrics"])
    labels = {"mcp_method_name": "tools/call", "gen_ai_tool_name": "state_echo", "upstream": "state", "outcome": "ok"}
    assert value(samples, "mcp_server_operation_duration_seconds_count", **labels, principal="alice") == 1


async def test_a_call_its_client_abandons_counts_as_cancelled_on_both_legs(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    marker = tmp_path / "sleeping"
    async with running_app(config) as proxy, connect(proxy.url) as client:
        with anyio.move_on_after(30):  # the bound of the whole wait, not a synchronisation
            async with anyio.create_task_group() as tg:

                async def abandoned_call() -> None:
                    await client.call_tool("state_sleep", {"seconds": 60, "started_marker": str(marker)})

                tg.start_soon(abandoned_call)
                await wait_until(marker.exists, what="the upstream to start the call")
                tg.cancel_scope.cancel()  # the client gives up: the SDK sends notifications/cancelled

        async def counted_as_cancelled() -> bool:
            return calls(await scrape(proxy), "state_sleep", "cancelled") == 1

        await wait_until(counted_as_cancelled, what="the abandoned call to be counted")
        samples = await scrape(proxy)
    client_leg = "mcp_client_operation_duration_seconds_count"
    assert value(samples, client_leg, mcp_method_name="tools/call", upstream="state", outcome="cancelled") == 1


async def test_requests_and_sessions_refused_while_draining_count_as_shutting_down_refusals(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=60)
    marker = tmp_path / "sleeping"
    async with running_app(config) as proxy, connect(proxy.url) as client, anyio.create_task_group() as tg:

        async def call_in_flight() -> None:
            with contextlib.suppress(MCPError):  # cut short when the test hurries the shutdown
                await client.call_tool("state_sleep", {"seconds": 60, "started_marker": str(marker)})

        tg.start_soon(call_in_flight)
        await wait_until(marker.exists, what="the upstream to start the call in flight")
        await proxy.start_draining()
        async with httpx2.AsyncClient() as http:
            newcomer = await http.post(proxy.url, json=INITIALIZE, headers=ACCEPT)
        assert newcomer.status_code == 503
        with pytest.raises(MCPError) as too_late:
            await client.call_tool("state_echo", {"text": "too late"})
        assert too_late.value.code == SHUTTING_DOWN
        samples = await scrape(proxy)
        assert value(samples, "mcpstore_refusals_total", limit="shutting_down") == 2
        assert value(samples, "mcpstore_requests_in_flight") == 1
        await proxy.request_stop()  # a second request hurries: the call in flight is cancelled


async def test_a_legacy_sse_clients_calls_in_the_lane_count_with_their_principal_and_outcome(tmp_path: Path) -> None:
    config, tokens = auth_config(tmp_path, metrics_per_principal=True)
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    async with (
        running_app(config) as proxy,
        Client(sse_client(f"http://127.0.0.1:{proxy.port}/sse", headers=headers), mode="legacy", cache=None) as alice,
    ):
        await alice.call_tool("state_echo", {"text": "hi"})
        await alice.call_tool("state_echo", {"text": "again"})
        assert (await alice.call_tool("state_rich", {"fail": True})).is_error
        samples = await scrape(proxy, tokens["metrics"])
        status = await admin(proxy.port, "GET", "/status", Authorization=f"Bearer {tokens['admin']}")
    assert status.json()["legacy_lane_calls"] == 3  # these calls were the lane's, not the SDK's
    labels = {"mcp_method_name": "tools/call", "upstream": "state", "principal": "alice"}
    name = "mcp_server_operation_duration_seconds_count"
    ok = value(samples, name, **labels, gen_ai_tool_name="state_echo", outcome="ok")
    failed = value(samples, name, **labels, gen_ai_tool_name="state_rich", outcome="error")
    assert (ok, failed) == (2, 1)
