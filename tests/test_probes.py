"""The probes Kubernetes asks: `/health` (liveness) answers 200 while the process lives, drain or not; `/ready`
(readiness) answers 200 only once the app serves and until it drains; `/healthz` stays as the older name of
`/health`. None needs a token, and none says anything about the upstreams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcpstore_proxy.app import create_app
from mcpstore_proxy.config import load_settings
from mcpstore_proxy.engine import ProxyEngine
from tests.held_call import HeldCall
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import alice_and_bob_config, connect, fixture_server, write_config

pytestmark = pytest.mark.anyio

OPERATOR = "operator-" + "o" * 16


async def probe(port: int, path: str, **headers: str) -> tuple[int, Any]:
    async with httpx2.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{port}{path}", headers=headers)
    return answer.status_code, answer.json()


async def test_ready_flips_to_503_during_a_drain_while_health_stays_200(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")}, shutdown_grace_seconds=60)
    held = HeldCall()  # the call stays in flight, and so the drain lasts, until the test releases it
    during_drain: dict[str, tuple[int, Any]] = {}
    async with running_app(config) as proxy, connect(proxy.url, sampling_callback=held.answer_once_released) as client:
        assert await probe(proxy.port, "/ready") == (200, {"status": "ok"})
        assert await probe(proxy.port, "/health") == (200, {"status": "ok"})

        async with held.in_flight(client, "state_ask"):
            await proxy.start_draining()
            for path in ("/ready", "/health", "/healthz"):
                during_drain[path] = await probe(proxy.port, path)
            held.release()
    assert held.answers == ["answered"]
    assert during_drain == {
        "/ready": (503, {"status": "draining"}),
        "/health": (200, {"status": "ok"}),  # a failing liveness probe would have the pod killed mid-drain
        "/healthz": (200, {"status": "draining"}),  # the older name: alive, and its body says it drains
    }


async def test_ready_is_503_until_the_apps_lifespan_has_started(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with ProxyEngine(load_settings(config), transports=MemoryUpstreams()) as engine:
        face = create_app(engine)
        # An ASGI transport runs no lifespan: the app as it is before uvicorn has started it.
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=face.app), base_url="http://127.0.0.1"
        ) as http:
            ready = await http.get("/ready")
            health = await http.get("/health")
    assert (ready.status_code, ready.json()) == (503, {"status": "starting"})
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


async def test_probes_need_no_token_and_name_nothing_they_serve_even_with_auth_on(tmp_path: Path) -> None:
    config = alice_and_bob_config(
        tmp_path, alice_token="alice-" + "a" * 16, bob_token="bob-" + "b" * 16, operator_token=OPERATOR
    )
    async with running_app(config) as proxy:
        for path in ("/health", "/healthz", "/ready"):
            assert await probe(proxy.port, path, Host="attacker.example") == (200, {"status": "ok"})
        # What they leave out is the operator's: /admin/status wants the admin token.
        refused, _ = await probe(proxy.port, "/admin/status")
        assert refused == 401
        allowed, status = await probe(proxy.port, "/admin/status", Authorization=f"Bearer {OPERATOR}")
        assert allowed == 200
        assert "state" in status["upstreams"]


async def test_answers_name_no_server_software_so_a_scan_learns_nothing_from_the_headers(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with running_app(config) as proxy, httpx2.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{proxy.port}/health")
    assert answer.status_code == 200
    assert "server" not in answer.headers  # uvicorn's own would say "uvicorn"
    assert "date" in answer.headers  # RFC 9110 §6.6.1: an origin server with a clock sends one
