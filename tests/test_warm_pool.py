"""The warm pool of an isolated upstream (`warm_sessions`, mcpstore_proxy/warm_pool.py), in memory: spares started
before any key asks, taken by new keys and replaced, within the cap, recycled when they die, closed with the
upstream, and never shared. whoami answers an upstream instance's identity, so a key's whoami tells which
instance serves it; `upstreams.started` lists every instance in the order they started."""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel
import httpx2
import pytest
from mcp import MCPError, types
from mcp.client.session import ClientRequestContext
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from bench import echo_server
from mcpstore_proxy import cli
from mcpstore_proxy.config import UpstreamConfig, load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ConfigError, SessionLimitError
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.pool import SessionPool
from mcpstore_proxy.services import IsolatedService
from mcpstore_proxy.status import status_report
from tests.clock import ManualClock
from tests.conversation import structured
from tests.engines import EngineHarness, running_engine
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import PROJECT_ROOT, connect, fixture_server, wait_until, write_config

pytestmark = pytest.mark.anyio

_ALICE = SessionKey.connection("alice")
_BOB = SessionKey.connection("bob")
_CAROL = SessionKey.explicit("carol")
ECHO_SERVER: Final = PROJECT_ROOT / "bench" / "echo_server.py"


def state_service(harness: EngineHarness, name: str = "state") -> IsolatedService:
    service = harness.engine.service("", name)
    assert isinstance(service, IsolatedService)
    return service


async def pool_filled(harness: EngineHarness, ready: int, name: str = "state") -> None:
    pool = state_service(harness, name).pool
    await wait_until(lambda: pool.warm.spares_ready == ready, timeout=5, what=f"{ready} spares of '{name}' to be ready")


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
        assert state_service(harness).pool.warm.spares[0] is not state_service(harness).pool.sessions[_ALICE]
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
        assert len(pool.warm.spares) == 1  # no replacement: one key and one spare fill the cap
        bob = await harness.call(_BOB, "state_whoami")
        assert {alice, bob} == set(harness.upstreams.started[1:3])
        assert (len(pool), len(pool.warm.spares)) == (2, 0)
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
        harness.clock.advance(10)  # it lived long enough not to look like a crash loop: no backoff

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


# A crash loop: an upstream that dies right after its handshake. Its spares are replaced after a backoff on the
# engine's clock (1 s, doubling to 60 s), which only the test moves; a spare that lived 10 s ends the backoff.


@dataclass(eq=False)
class _CrashLoop:
    """bench/echo_server.py's server in memory, whose instances after the first (the catalog's) exit right after
    their handshake while `is_crashing`; `kill(n)` ends the n-th instance (from 0) from outside."""

    is_crashing: bool = True
    instances: list[anyio.CancelScope] = field(default_factory=list[anyio.CancelScope])

    def kill(self, instance: int) -> None:
        self.instances[instance].cancel()

    def build(self) -> Server[Any]:
        running = anyio.CancelScope()
        exits_at_once = self.is_crashing and bool(self.instances)
        self.instances.append(running)

        async def note_initialized(ctx: ServerRequestContext[Any, Any], params: types.NotificationParams) -> None:
            if exits_at_once:
                running.cancel()

        @asynccontextmanager
        async def lifespan(server: Server[Any]) -> AsyncGenerator[dict[str, Any]]:
            # Ending the serving loop closes its write stream: its client sees the connection end, as on an exit.
            with running:
                yield {}

        server: Server[Any] = Server(
            "echo", lifespan=lifespan, on_list_tools=echo_server.list_tools, on_call_tool=echo_server.call_tool
        )
        server.add_notification_handler("notifications/initialized", types.NotificationParams, note_initialized)
        return server


@asynccontextmanager
async def crash_looping_engine(
    tmp_path: Path, crash_loop: _CrashLoop, warm_sessions: int = 1
) -> AsyncGenerator[EngineHarness]:
    """The engine over one isolated upstream 'loop' that runs `crash_loop`; leaving it checks that no instance
    outlived it."""
    upstreams, clock = MemoryUpstreams(scripts={ECHO_SERVER: crash_loop.build}), ManualClock()
    servers = {"loop": {"command": sys.executable, "args": [str(ECHO_SERVER)], "warm_sessions": warm_sessions}}
    async with ProxyEngine(load_settings(write_config(tmp_path, servers)), transports=upstreams, clock=clock) as engine:
        await engine.started()
        yield EngineHarness(engine, upstreams, clock)
    assert not upstreams.live, f"upstream instances {sorted(upstreams.live)} outlived the engine"


async def spare_lost(harness: EngineHarness, instances: int) -> SessionPool:
    """Wait until the upstream's `instances`-th instance (a spare) has gone away with no replacement started (a
    spare joins the pool before its instance starts, so none is missed); the pool."""
    pool = state_service(harness, "loop").pool
    await wait_until(
        lambda: len(harness.upstreams.started) == instances and not pool.warm.spares,
        timeout=5,
        what=f"spare number {instances - 1} to go away, and no replacement to start",
    )
    return pool


def operator_view(harness: EngineHarness) -> dict[str, Any]:
    """What `/admin/status` says of the upstream 'loop'."""
    return status_report(harness.engine, is_draining=False, requests_in_flight=0)["upstreams"]["loop"]


async def test_a_spare_that_dies_right_after_its_handshake_is_replaced_only_after_a_doubling_backoff(
    tmp_path: Path,
) -> None:
    async with crash_looping_engine(tmp_path, _CrashLoop()) as harness:
        pool = await spare_lost(harness, 2)  # the catalog's instance, then the first spare's
        assert (pool.warm.is_refill_waiting, pool.warm.refill_delay_seconds) == (True, 1.0)  # the clock has not moved
        assert "(refilling after 1 s)" in repr(pool)
        assert operator_view(harness)["warm_pool"] == {"ready": 0, "target": 1, "backoff_seconds": 1.0}

        harness.clock.advance(0.5)
        await anyio.lowlevel.checkpoint()
        assert (len(harness.upstreams.started), pool.warm.spares) == (2, [])
        harness.clock.advance(0.5)
        await spare_lost(harness, 3)  # the second spare, started once the backoff was over, dies too
        assert (pool.warm.is_refill_waiting, pool.warm.refill_delay_seconds) == (True, 2.0)

        harness.clock.advance(1)
        await anyio.lowlevel.checkpoint()
        assert (len(harness.upstreams.started), pool.warm.spares) == (3, [])
        harness.clock.advance(1)
        await spare_lost(harness, 4)
        assert pool.warm.refill_delay_seconds == 4.0


async def test_spares_lost_together_wait_out_one_backoff_and_are_all_replaced_at_its_end(tmp_path: Path) -> None:
    async with crash_looping_engine(tmp_path, _CrashLoop(), warm_sessions=2) as harness:
        pool = await spare_lost(harness, 3)  # the catalog's instance, then both spares'
        assert (pool.warm.is_refill_waiting, pool.warm.refill_delay_seconds) == (True, 1.0)

        harness.clock.advance(1)

        await spare_lost(harness, 5)  # two replacements at once, lost together again
        assert (pool.warm.is_refill_waiting, pool.warm.refill_delay_seconds) == (True, 2.0)


async def test_the_backoff_stops_doubling_at_a_minute(tmp_path: Path) -> None:
    async with crash_looping_engine(tmp_path, _CrashLoop()) as harness:
        pool = await spare_lost(harness, 2)
        for spare, delay in enumerate((1, 2, 4, 8, 16, 32, 60), start=2):
            assert pool.warm.refill_delay_seconds == delay
            harness.clock.advance(delay)
            await spare_lost(harness, spare + 1)
        assert pool.warm.refill_delay_seconds == 60


async def test_a_spare_lost_after_it_lived_long_is_replaced_at_once_and_ends_the_backoff(tmp_path: Path) -> None:
    crash_loop = _CrashLoop()
    async with crash_looping_engine(tmp_path, crash_loop) as harness:
        pool = await spare_lost(harness, 2)
        crash_loop.is_crashing = False
        harness.clock.advance(1)
        await pool_filled(harness, 1, "loop")
        lasting = harness.upstreams.started[-1]
        assert pool.warm.refill_delay_seconds == 1  # a spare that is up has not lived long yet

        harness.clock.advance(10)
        crash_loop.kill(2)  # the catalog's instance, the lost spare's, then the lasting one's

        await wait_until(lambda: len(harness.upstreams.started) == 4, timeout=5, what="the lasting spare's replacement")
        await pool_filled(harness, 1, "loop")
        assert (pool.warm.is_refill_waiting, pool.warm.refill_delay_seconds) == (False, 0)
        assert not harness.upstreams.is_alive(lasting)
        assert operator_view(harness)["warm_pool"] == {"ready": 1, "target": 1}


async def test_a_new_key_gets_its_own_session_at_once_while_the_pool_backs_off(tmp_path: Path) -> None:
    crash_loop = _CrashLoop()
    async with crash_looping_engine(tmp_path, crash_loop) as harness:
        pool = await spare_lost(harness, 2)
        crash_loop.is_crashing = False

        route = harness.engine.tool_route(_ALICE, "loop_echo")
        result = await harness.engine.call_tool(_ALICE, route, {"text": "hello"})

        assert result["content"] == [{"type": "text", "text": "hello"}]
        assert _ALICE in pool.sessions
        assert pool.warm.spares == []  # her session did not end the backoff
        assert len(harness.upstreams.started) == 3  # the catalog, the lost spare, and alice's session
        harness.clock.advance(1)
        await pool_filled(harness, 1, "loop")


async def test_closing_the_engine_while_a_replacement_waits_leaves_nothing_running(tmp_path: Path) -> None:
    async with crash_looping_engine(tmp_path, _CrashLoop()) as harness:
        pool = await spare_lost(harness, 2)
        assert pool.warm.is_refill_waiting
    assert not pool.warm.is_refill_waiting  # closing the pool ended the wait: the engine's task group held it, is done
    assert len(harness.upstreams.started) == 2
    # crash_looping_engine has checked that no instance outlived the engine


async def test_a_closed_upstream_starts_nothing_when_its_backoff_would_have_ended(tmp_path: Path) -> None:
    async with crash_looping_engine(tmp_path, _CrashLoop()) as harness:
        pool = await spare_lost(harness, 2)

        await state_service(harness, "loop").close("it was removed")  # what removing it does
        harness.clock.advance(60)
        await anyio.lowlevel.checkpoint()

        assert not pool.warm.is_refill_waiting
        assert pool.warm.spares == []
        assert len(harness.upstreams.started) == 2
        assert not harness.upstreams.live


async def test_restarting_the_upstream_ends_the_backoff_and_refills_at_once(tmp_path: Path) -> None:
    crash_loop = _CrashLoop()
    async with crash_looping_engine(tmp_path, crash_loop) as harness:
        pool = await spare_lost(harness, 2)
        crash_loop.is_crashing = False

        await harness.engine.restart_service("", "loop")
        await harness.engine.wait_service("", "loop", 5)

        await pool_filled(harness, 1, "loop")
        assert (pool.warm.is_refill_waiting, pool.warm.refill_delay_seconds) == (False, 0)
