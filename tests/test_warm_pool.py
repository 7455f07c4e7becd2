"""The warm pool of an isolated upstream (`warm_sessions`, mcpstore_proxy/pool.py), in memory: spares started
before any key asks, taken by new keys and replaced, within the cap, recycled when they die, closed with the
upstream, and never shared. whoami answers an upstream instance's identity, so a key's whoami tells which
instance serves it; `upstreams.started` lists every instance in the order they started."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import MCPError, types
from mcp.client.session import ClientRequestContext

from mcpstore_proxy import cli
from mcpstore_proxy.config import UpstreamConfig, load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ConfigError, SessionLimitError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.services import IsolatedService
from tests.engines import EngineHarness, running_engine
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import connect, fixture_server, structured, wait_until, write_config

pytestmark = pytest.mark.anyio

_ALICE = SessionKey.connection("alice")
_BOB = SessionKey.connection("bob")
_CAROL = SessionKey.explicit("carol")


def state_service(harness: EngineHarness, name: str = "state") -> IsolatedService:
    service = harness.engine.service("", name)
    assert isinstance(service, IsolatedService)
    return service


async def pool_filled(harness: EngineHarness, ready: int, name: str = "state") -> None:
    pool = state_service(harness, name).pool
    await wait_until(lambda: pool.spares_ready == ready, timeout=5, what=f"{ready} spares of '{name}' to be ready")


async def test_a_new_keys_first_call_runs_on_a_spare_started_before_it_asked(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state", warm_sessions=1)}) as harness:
        await pool_filled(harness, 1)
        catalog, spare = harness.upstreams.started  # both started before any call

        assert await harness.call(_ALICE, "state_whoami") == spare
        assert await harness.call(_ALICE, "state_remember", value="kept") == ["kept"]
        assert await harness.call(_ALICE, "state_whoami") == spare
        assert catalog != spare


async def test_a_taken_spare_is_replaced_at_once_by_a_fresh_one(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state", warm_sessions=1)}) as harness:
        await pool_filled(harness, 1)
        taken = await harness.call(_ALICE, "state_whoami")

        await wait_until(lambda: len(harness.upstreams.started) == 3, timeout=5, what="a replacement spare")
        replacement = harness.upstreams.started[-1]
        await pool_filled(harness, 1)
        assert state_service(harness).pool.spares[0] is not state_service(harness).pool.sessions[_ALICE]
        assert await harness.call(_BOB, "state_whoami") == replacement != taken
        assert repr(state_service(harness).pool).startswith("<SessionPool state: 2 sessions (0 starting), ")


async def test_two_keys_asking_at_once_never_get_the_same_spare(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state", warm_sessions=2)}) as harness:
        await pool_filled(harness, 2)
        spares = set(harness.upstreams.started[1:])
        identities: dict[SessionKey, int] = {}

        async def whoami(key: SessionKey) -> None:
            identities[key] = await harness.call(key, "state_whoami")

        async with anyio.create_task_group() as tg:
            for key in (_ALICE, _BOB, _CAROL):
                tg.start_soon(whoami, key)

        assert len(set(identities.values())) == 3
        assert len(spares & set(identities.values())) == 2  # each spare went to one key; the third got a later one


async def test_spares_fill_only_the_room_keys_leave_under_the_cap_so_no_key_is_refused_for_them(
    tmp_path: Path,
) -> None:
    servers = {"state": fixture_server("state", warm_sessions=2, max_sessions=2)}
    async with running_engine(tmp_path, servers) as harness:
        pool = state_service(harness).pool
        await pool_filled(harness, 2)  # the spares alone fill the cap

        alice = await harness.call(_ALICE, "state_whoami")  # taken from the pool, not refused
        assert len(pool) == 1
        assert len(pool.spares) == 1  # no replacement: one key and one spare fill the cap
        bob = await harness.call(_BOB, "state_whoami")
        assert {alice, bob} == set(harness.upstreams.started[1:3])
        assert (len(pool), len(pool.spares)) == (2, 0)
        with pytest.raises(SessionLimitError):
            await harness.call(_CAROL, "state_whoami")  # the keys hold the cap; the pool adds nothing
        assert len(harness.upstreams.started) == 3

        await harness.engine.end_session(_ALICE)
        await pool_filled(harness, 1)  # the room alice left is warm again
        assert len(harness.upstreams.live) == 3  # the catalog, bob's session, and one spare
        assert await harness.call(_CAROL, "state_whoami") == harness.upstreams.started[-1]


async def test_a_spare_that_dies_is_replaced_and_never_given_to_a_key(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state", warm_sessions=1)}) as harness:
        await pool_filled(harness, 1)
        dead = harness.upstreams.started[-1]

        harness.upstreams.kill(dead)

        await wait_until(lambda: len(harness.upstreams.started) == 3, timeout=5, what="the dead spare's replacement")
        await pool_filled(harness, 1)
        replacement = harness.upstreams.started[-1]
        assert not harness.upstreams.is_alive(dead)
        assert await harness.call(_ALICE, "state_whoami") == replacement


async def test_restarting_the_upstream_closes_its_spares_and_starts_fresh_ones(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state", warm_sessions=2)}) as harness:
        await pool_filled(harness, 2)
        before = set(harness.upstreams.started[1:])

        await harness.engine.restart_service("", "state")
        await harness.engine.wait_service("", "state", 5)
        await pool_filled(harness, 2)

        assert not before & harness.upstreams.live
        assert len(harness.upstreams.live) == 3  # a fresh catalog session and two fresh spares
        assert await harness.call(_ALICE, "state_whoami") not in before


async def test_removing_the_upstream_closes_its_spares(tmp_path: Path) -> None:
    async with running_engine(tmp_path, {"state": fixture_server("state")}) as harness:
        await harness.engine.add_service(
            "", "extra", UpstreamConfig.model_validate(fixture_server("extra", warm_sessions=2))
        )
        await harness.engine.wait_service("", "extra", 5)
        await pool_filled(harness, 2, "extra")
        spares = set(harness.upstreams.started[-2:])
        assert spares <= harness.upstreams.live

        await harness.engine.remove_service("", "extra")

        assert not spares & harness.upstreams.live
        assert len(harness.upstreams.live) == 1  # only state's catalog session


async def test_the_operator_status_shows_the_pool_and_no_spare_outlives_the_proxy(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"state": fixture_server("state", warm_sessions=2), "plain": fixture_server("plain")}
    )
    async with running_app(config) as proxy, httpx2.AsyncClient() as http:
        status_url = f"http://127.0.0.1:{proxy.port}/admin/status"

        async def warm() -> bool:
            status = (await http.get(status_url)).json()
            return status["upstreams"]["state"]["warm_pool"] == {"ready": 2, "target": 2}

        await wait_until(warm, timeout=10, what="the warm pool to show 2 of 2 spares ready")
        prestarted = set(proxy.upstreams.started)
        async with connect(proxy.url) as client:
            assert structured(await client.call_tool("state_whoami", {})) in prestarted
        assert "warm_pool" not in (await http.get(status_url)).json()["upstreams"]["plain"]
        assert (await http.get(f"http://127.0.0.1:{proxy.port}/healthz")).json() == {"status": "ok"}
        assert len(proxy.live_upstreams()) >= 4  # two catalogs and two spares at least
    # running_app has checked that no upstream instance, spare or not, outlived the proxy


async def test_a_spare_asks_only_the_client_that_took_it_and_only_what_that_client_declared(tmp_path: Path) -> None:
    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="from alice"), model="test-model"
        )

    config = write_config(tmp_path, {"state": fixture_server("state", warm_sessions=2)})
    async with running_app(config) as proxy:
        await wait_until(lambda: len(proxy.upstreams.started) == 3, timeout=10, what="two spares to start")
        spares = set(proxy.upstreams.started[1:])
        async with connect(proxy.url, sampling_callback=sampling) as alice, connect(proxy.url) as bob:
            assert structured(await alice.call_tool("state_ask", {"prompt": "who?"})) == "from alice"
            with pytest.raises(MCPError) as refused:
                await bob.call_tool("state_ask", {"prompt": "who?"})
            assert "sampling, which this session's client did not declare" in refused.value.error.message
            identities = {structured(await client.call_tool("state_whoami", {})) for client in (alice, bob)}
        assert identities == spares


def leave_logging_alone(level: str, log_format: str = "text") -> None:
    """In place of `configure_logging`, which would take the root logger over from pytest."""


def test_check_shows_the_warm_pool_once_its_spares_are_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = MemoryUpstreams()
    monkeypatch.setattr(cli, "ProxyEngine", functools.partial(ProxyEngine, transports=memory))
    monkeypatch.setattr(cli, "configure_logging", leave_logging_alone)
    config = write_config(
        tmp_path, {"state": fixture_server("state", warm_sessions=2), "plain": fixture_server("plain")}
    )

    assert cli.main(["check", "--config", str(config)]) == 0

    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["state"].endswith("warm pool: 2/2 spares ready")
    assert "warm pool" not in rows["plain"]
    assert not memory.live


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{command: x, session: shared, warm_sessions: 1}", "mcpServers.a: has warm_sessions: 1, but a shared"),
        ("{command: x, warm_sessions: -1}", "mcpServers.a.warm_sessions"),
        ("{command: x, warm_sessions: 1.5}", "mcpServers.a.warm_sessions"),
    ],
)
def test_warm_sessions_must_be_a_whole_number_for_an_isolated_upstream(
    tmp_path: Path, entry: str, message: str
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(f"mcpServers:\n  a: {entry}\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert message in error.value.message


def test_an_upstream_keeps_no_spares_unless_asked() -> None:
    assert UpstreamConfig.model_validate({"command": "x"}).warm_sessions == 0
